//! A world of one rank, in the test process itself: the group works and returns its own values.
mod common;
use std::time::Duration;

use albef_dist::{Backend, Launcher, ProcessGroup, World};
use tch::{Device, Kind, Tensor};

fn world_of_one() -> World {
    let port = common::free_port();
    World {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        restart_count: 0,
        launcher: Launcher::Torchrun,
    }
}

#[test]
fn a_group_of_one_returns_its_own_values() {
    let group = ProcessGroup::new(&world_of_one(), Backend::Gloo, Duration::from_secs(30))
        .unwrap()
        .with_bucket_bytes(64);
    let originals = [
        Tensor::randn([10], (Kind::Float, Device::Cpu)),
        Tensor::randn([3, 4], (Kind::Double, Device::Cpu)),
        Tensor::randn([40], (Kind::Float, Device::Cpu)),
    ];
    let mut tensors: Vec<Tensor> = originals.iter().map(Tensor::copy).collect();
    group.all_reduce_mean(&mut tensors).unwrap();
    group.broadcast(&mut tensors, 0).unwrap();
    for (got, original) in tensors.iter().zip(&originals) {
        assert!(got.equal(original));
    }
    assert!(group
        .all_gather(&originals[1])
        .unwrap()
        .equal(&originals[1]));
    let scalar = Tensor::from(2.5f64);
    assert_eq!(
        Vec::<f64>::try_from(group.all_gather(&scalar).unwrap()).unwrap(),
        [2.5]
    );
    group.barrier().unwrap();
    let err = group.broadcast(&mut tensors, 1).unwrap_err().to_string();
    assert!(err.contains("rank 1 in a world of 1"), "{err}");
}
