//! libtorch's CUDA backend, loaded on first use.
//!
//! The `albef` binary does not keep `libtorch_cuda.so` among its start-up libraries: ingest, the
//! registry, the scheduler and the dashboards never touch a GPU, and loading the CUDA library
//! (with cuDNN, cuBLAS and the CUDA runtime behind it) costs every process hundreds of MB of
//! resident memory and a slower start. The first CUDA device asked for loads it here, by name,
//! from `LD_LIBRARY_PATH` or the binary's runpath (libtorch's folder), before anything asks
//! libtorch about CUDA: libtorch decides once, on the first question, whether CUDA is there.
use anyhow::{bail, Result};
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

const LIBRARY: &str = "libtorch_cuda.so";

/// Loads libtorch's CUDA library (once per process) and checks that GPU `index` exists.
pub fn ensure_device(index: usize) -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = LOADED.get_or_init(load) {
        bail!("device cuda:{index} asked for, but {e}");
    }
    let count = tch::Cuda::device_count();
    if count <= 0 {
        bail!(
            "device cuda:{index} asked for, but libtorch sees no GPU (is the NVIDIA driver \
             loaded, and does CUDA_VISIBLE_DEVICES name one?)"
        );
    }
    if index as i64 >= count {
        bail!(
            "device cuda:{index} asked for, but libtorch sees {count} GPU(s): cuda:0..cuda:{}",
            count - 1
        );
    }
    Ok(())
}

fn load() -> Result<(), String> {
    let name = CString::new(LIBRARY).expect("no NUL in the library name");
    // SAFETY: dlopen with a valid C string; the handle is kept open for the life of the process
    // (libtorch registers its CUDA hooks when the library is loaded and never unregisters them).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a C string valid until the next dl* call on this thread.
        let reason = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown reason".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!(
            "libtorch's CUDA library could not be loaded ({reason}): a CPU-only libtorch, or \
             LIBTORCH pointing at a build without CUDA"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::parse_device;

    #[test]
    fn device_names_are_parsed_and_checked() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        // A CUDA device is accepted exactly when libtorch, its CUDA library loaded, sees a GPU.
        match parse_device("cuda") {
            Ok(device) => {
                assert_eq!(device, tch::Device::Cuda(0));
                assert!(tch::Cuda::device_count() > 0);
            }
            Err(e) => {
                assert!(e.to_string().contains("cuda:0"), "{e}");
                assert_eq!(tch::Cuda::device_count(), 0, "{e}");
            }
        }
        let beyond = parse_device("cuda:4096").unwrap_err().to_string();
        assert!(beyond.contains("cuda:4096"), "{beyond}");
    }
}
