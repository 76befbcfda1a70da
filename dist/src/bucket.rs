//! Flattened buckets: many tensors travel in a few collective calls, as DDP's reducer does,
//! instead of one call (and one network round trip) per tensor.
use std::ops::Range;

use tch::Tensor;

/// Consecutive runs of `tensors` that share a kind and a device, each at most `bucket_bytes`
/// (a larger tensor is a bucket of its own). The same list gives the same buckets on every rank.
pub(crate) fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let joins = out.last().is_some_and(|last| {
            let head = &tensors[last.start];
            head.kind() == t.kind() && head.device() == t.device() && bytes + size <= bucket_bytes
        });
        if joins {
            out.last_mut().expect("a bucket").end = i + 1;
            bytes += size;
        } else {
            out.push(i..i + 1);
            bytes = size;
        }
    }
    out
}

/// Runs the in-place `collective` over `tensors` in one call: on the tensor itself when it is
/// alone and contiguous, else on a flat copy that is then copied back.
pub(crate) fn with_flat<E>(
    tensors: &mut [Tensor],
    collective: impl FnOnce(&mut Tensor) -> Result<(), E>,
) -> Result<(), E> {
    let _no_grad = tch::no_grad_guard();
    if let [t] = tensors {
        if t.is_contiguous() {
            return collective(&mut t.shallow_clone());
        }
    }
    let flat: Vec<Tensor> = tensors.iter().map(|t| t.reshape([-1])).collect();
    let mut flat = Tensor::cat(&flat, 0);
    collective(&mut flat)?;
    let mut offset = 0;
    for t in tensors.iter_mut() {
        let n = t.numel() as i64;
        t.copy_(&flat.narrow(0, offset, n).view_as(t));
        offset += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn buckets_split_by_size_and_kind() {
        let f = |n: i64, kind| Tensor::zeros([n], (kind, Device::Cpu));
        let tensors = [
            f(100, Kind::Float), // 400 bytes
            f(100, Kind::Float),
            f(200, Kind::Float),  // 800: would make 1600
            f(10, Kind::Double),  // another kind
            f(1000, Kind::Float), // larger than a bucket: alone
            f(1, Kind::Float),
        ];
        assert_eq!(buckets(&tensors, 1000), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        assert_eq!(buckets(&tensors, 1 << 20), vec![0..3, 3..4, 4..6]);
    }

    #[test]
    fn with_flat_copies_the_result_back_into_every_tensor() {
        let mut tensors = [
            Tensor::from_slice(&[1f32, 2.]),
            Tensor::from_slice(&[3f32, 4., 5., 6.])
                .reshape([2, 2])
                .transpose(0, 1),
        ];
        with_flat::<()>(&mut tensors, |flat| {
            assert_eq!(flat.size(), [6]);
            let _ = flat.g_mul_scalar_(10);
            Ok(())
        })
        .unwrap();
        assert_eq!(Vec::<f32>::try_from(&tensors[0]).unwrap(), [10., 20.]);
        let second = Vec::<f32>::try_from(tensors[1].reshape([-1])).unwrap();
        assert_eq!(second, [30., 50., 40., 60.]);
    }
}
