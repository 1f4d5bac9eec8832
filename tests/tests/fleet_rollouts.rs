//! Rollouts over a simulated fleet of 200 sites with varied labels, driven through a
//! real control plane: real agents in one process (own keys, QUIC links, TUF
//! verification) whose services report what each test says. Each test watches the
//! rollout through the API while it runs and checks what every site was told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet_rollouts {
    mod common;

    mod budgets;
    mod removal;
    mod restarts;
    mod waves;
    mod windows;
    mod yank;
}
