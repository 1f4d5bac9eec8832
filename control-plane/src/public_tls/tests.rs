use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::*;

/// A CA standing in for a public one.
fn authority() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Issuer::new(params, key)
}

/// Writes a leaf for `names` issued by `ca` into `dir`; returns its files and key PEM.
fn issue(dir: &Path, ca: &Issuer<'static, KeyPair>, names: &[&str]) -> (CertFiles, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let files = CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (files, key.serialize_pem())
}

fn served_key(cert: &PublicCert) -> Vec<u8> {
    cert.current
        .read()
        .unwrap()
        .key
        .end_entity_cert()
        .unwrap()
        .to_vec()
}

#[test]
fn a_matching_pair_loads_and_says_which_names_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = issue(dir.path(), &authority(), &["cp.example.org", "127.0.0.1"]);
    let cert = PublicCert::load(files).unwrap();
    assert!(cert.covers("cp.example.org"));
    assert!(cert.covers("127.0.0.1"));
    assert!(!cert.covers("other.example.org"));
    assert!(!cert.covers("127.0.0.2"));
    assert!(!cert.covers("not a name"));
    assert!(
        (0..=366 * 5000).contains(&cert.days_left()),
        "{}",
        cert.days_left()
    );
}

#[test]
fn bad_files_are_refused_with_the_flag_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority();
    let (files, _) = issue(dir.path(), &ca, &["cp.example.org"]);

    let missing = CertFiles {
        cert: dir.path().join("absent.crt"),
        key: files.key.clone(),
    };
    let e = PublicCert::load(missing).unwrap_err();
    assert!(
        e.starts_with("--tls-cert ") && e.contains("absent.crt"),
        "{e}"
    );

    std::fs::write(dir.path().join("empty.crt"), "no certificate here\n").unwrap();
    let empty = CertFiles {
        cert: dir.path().join("empty.crt"),
        key: files.key.clone(),
    };
    let e = PublicCert::load(empty).unwrap_err();
    assert!(e.contains("no PEM certificate"), "{e}");

    std::fs::write(
        dir.path().join("garbage.key"),
        "-----BEGIN PRIVATE KEY-----\n!!\n",
    )
    .unwrap();
    let garbage = CertFiles {
        cert: files.cert.clone(),
        key: dir.path().join("garbage.key"),
    };
    let e = PublicCert::load(garbage).unwrap_err();
    assert!(
        e.starts_with("--tls-key ") && e.contains("garbage.key"),
        "{e}"
    );

    // Another certificate's key.
    let other = tempfile::tempdir().unwrap();
    let (other_files, _) = issue(other.path(), &ca, &["cp.example.org"]);
    let mismatched = CertFiles {
        cert: files.cert.clone(),
        key: other_files.key,
    };
    let e = PublicCert::load(mismatched).unwrap_err();
    assert!(e.contains("does not go with"), "{e}");
}

#[test]
fn a_renewal_replaces_the_certificate_and_a_bad_one_leaves_it_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority();
    let (files, _) = issue(dir.path(), &ca, &["cp.example.org"]);
    let cert = PublicCert::load(files).unwrap();
    let first = served_key(&cert);
    let names = vec!["cp.example.org".to_owned()];

    issue(dir.path(), &ca, &["cp.example.org", "www.example.org"]);
    cert.reload(&names).unwrap();
    let second = served_key(&cert);
    assert_ne!(first, second);

    // A renewal that drops an advertised name is refused.
    issue(dir.path(), &ca, &["www.example.org"]);
    let e = cert.reload(&names).unwrap_err();
    assert!(e.contains("does not cover cp.example.org"), "{e}");
    assert_eq!(served_key(&cert), second);

    // So is a half-written one.
    std::fs::write(dir.path().join("tls.key"), "").unwrap();
    assert!(cert.reload(&names).is_err());
    assert_eq!(served_key(&cert), second);
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority();
    let (files, _) = issue(dir.path(), &ca, &["cp.example.org"]);
    let cert = Arc::new(PublicCert::load(files).unwrap());
    let first = served_key(&cert);
    cert.watch(vec!["cp.example.org".to_owned()]).unwrap();
    issue(dir.path(), &ca, &["cp.example.org"]);
    for _ in 0..100 {
        if served_key(&cert) != first {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the renewed certificate was not picked up within 5 s");
}
