//! The sled store checked against the in-memory model with random operation sequences,
//! and across a reopen.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u8, Vec<u8>),
    Remove(u8, u8),
    Bump(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let tree = 0u8..3;
    let key = 0u8..8;
    prop_oneof![
        (
            tree.clone(),
            key.clone(),
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(t, k, v)| Op::Insert(t, k, v)),
        (tree.clone(), key.clone()).prop_map(|(t, k)| Op::Remove(t, k)),
        (tree, key).prop_map(|(t, k)| Op::Bump(t, k)),
    ]
}

fn apply(store: &dyn Store, op: &Op) {
    let tree = |t: u8| Tree::ALL[t as usize];
    match op {
        Op::Insert(t, k, v) => store.insert(tree(*t), &[*k], v).unwrap(),
        Op::Remove(t, k) => store.remove(tree(*t), &[*k]).unwrap(),
        Op::Bump(t, k) => {
            store
                .update(tree(*t), &[*k], &mut |old| {
                    let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
                    v.push(1);
                    Some(v)
                })
                .unwrap();
        }
    }
}

fn contents(store: &dyn Store) -> Vec<Vec<Entry>> {
    Tree::ALL.iter().map(|t| store.scan(*t).unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sled_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let model = MemoryStore::new();
        {
            let sled = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
            for op in &ops {
                apply(&model, op);
                apply(&sled, op);
            }
            prop_assert_eq!(contents(&model), contents(&sled));
            let last: Vec<Entry> = model.scan(Tree::Sites).unwrap().into_iter().rev().take(3).collect();
            prop_assert_eq!(last, sled.scan_last(Tree::Sites, 3).unwrap());
            sled.flush().unwrap();
        }
        // sled's background flusher may hold the file lock for a moment after the drop.
        let reopened = (0..100)
            .find_map(|_| {
                SledStore::open(&dir.path().join("db"), 1 << 20)
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(20)))
                    .ok()
            })
            .expect("the store reopens once the previous handle is gone");
        prop_assert_eq!(contents(&model), contents(&reopened));
    }
}
