//! `World::from_vars`: the launchers' variables, and the errors for bad ones.
use std::collections::HashMap;

use albef_dist::{Launcher, World};

fn world(vars: &[(&str, &str)]) -> anyhow::Result<Option<World>> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    World::from_vars(|name| vars.get(name).cloned())
}

fn error(vars: &[(&str, &str)]) -> String {
    format!("{:#}", world(vars).expect_err("bad variables"))
}

const TORCHRUN: [(&str, &str); 7] = [
    ("RANK", "3"),
    ("WORLD_SIZE", "4"),
    ("LOCAL_RANK", "1"),
    ("MASTER_ADDR", "10.0.0.1"),
    ("MASTER_PORT", "29500"),
    ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ("TORCHELASTIC_RESTART_COUNT", "2"),
];

const SLURM: [(&str, &str); 5] = [
    ("SLURM_PROCID", "5"),
    ("SLURM_NTASKS", "8"),
    ("SLURM_LOCALID", "1"),
    ("MASTER_ADDR", "node-0"),
    ("MASTER_PORT", "12345"),
];

/// `base` with `name` set to `value` (or removed when `value` is None).
fn with(
    base: &[(&'static str, &'static str)],
    name: &'static str,
    value: Option<&'static str>,
) -> Vec<(&'static str, &'static str)> {
    let mut vars: Vec<_> = base.iter().copied().filter(|(k, _)| *k != name).collect();
    vars.extend(value.map(|v| (name, v)));
    vars
}

#[test]
fn no_launcher_variables_is_no_world() {
    assert_eq!(world(&[("HOME", "/root")]).unwrap(), None);
    // One Slurm task without MASTER_ADDR is a plain job.
    assert_eq!(
        world(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0")
        ])
        .unwrap(),
        None
    );
}

#[test]
fn torchrun_variables() {
    let w = world(&TORCHRUN).unwrap().unwrap();
    assert_eq!(
        w,
        World {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            master_addr: "10.0.0.1".into(),
            master_port: 29500,
            agent_store: true,
            restart_count: 2,
            launcher: Launcher::Torchrun,
        }
    );
    assert!(!w.serves_store());
    assert_eq!(
        w.store_prefix(),
        "/worker/attempt_2",
        "one namespace per attempt"
    );
    // Rank 0 serves the store unless torchrun's agent does.
    let rank0 = world(&with(
        &with(&TORCHRUN, "RANK", Some("0")),
        "TORCHELASTIC_USE_AGENT_STORE",
        None,
    ));
    assert!(rank0.unwrap().unwrap().serves_store());
    let agent = world(&with(&TORCHRUN, "RANK", Some("0"))).unwrap().unwrap();
    assert!(!agent.serves_store());
    // PyTorchJob without torchrun sets no LOCAL_RANK.
    assert_eq!(
        world(&with(&TORCHRUN, "LOCAL_RANK", None))
            .unwrap()
            .unwrap()
            .local_rank,
        0
    );
}

#[test]
fn slurm_variables() {
    let w = world(&SLURM).unwrap().unwrap();
    assert_eq!((w.rank, w.world_size, w.local_rank), (5, 8, 1));
    assert_eq!((w.master_addr.as_str(), w.master_port), ("node-0", 12345));
    assert_eq!(w.launcher, Launcher::Slurm);
    assert!(!w.agent_store);
    // torchrun inside a Slurm job: torchrun's variables win.
    let both: Vec<_> = SLURM.iter().chain(&TORCHRUN[..3]).copied().collect();
    assert_eq!(world(&both).unwrap().unwrap().launcher, Launcher::Torchrun);
}

#[test]
fn bad_values_name_the_variable() {
    let cases: [(Vec<(&str, &str)>, &str); 11] = [
        (
            with(&TORCHRUN, "RANK", Some("one")),
            "RANK=\"one\" is not a non-negative integer",
        ),
        (
            with(&TORCHRUN, "RANK", Some("-1")),
            "RANK=\"-1\" is not a non-negative integer",
        ),
        (
            with(&TORCHRUN, "RANK", Some("4")),
            "RANK=4 is not below WORLD_SIZE=4",
        ),
        (with(&TORCHRUN, "WORLD_SIZE", None), "WORLD_SIZE is not set"),
        (with(&TORCHRUN, "WORLD_SIZE", Some("0")), "WORLD_SIZE=0"),
        (with(&TORCHRUN, "LOCAL_RANK", Some("x")), "LOCAL_RANK=\"x\""),
        (
            with(&TORCHRUN, "MASTER_PORT", Some("70000")),
            "MASTER_PORT=\"70000\" is not a port",
        ),
        (
            with(&TORCHRUN, "MASTER_ADDR", None),
            "MASTER_ADDR is not set",
        ),
        (
            with(&TORCHRUN, "TORCHELASTIC_USE_AGENT_STORE", Some("yes")),
            "TORCHELASTIC_USE_AGENT_STORE=\"yes\" is not True or False",
        ),
        (
            with(&SLURM, "SLURM_PROCID", Some("8")),
            "SLURM_PROCID=8 is not below SLURM_NTASKS=8",
        ),
        (
            with(&SLURM, "MASTER_ADDR", None),
            "MASTER_ADDR is not set: Slurm started 8 tasks",
        ),
    ];
    for (vars, expected) in cases {
        let message = error(&vars);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
}
