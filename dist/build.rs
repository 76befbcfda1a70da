//! Compiles the C++ shim (`csrc/c10d_shim.cpp`) over libtorch's c10d against the same libtorch
//! that torch-sys links, and gives the crate's binary a runpath to it.
//!
//! torch-sys declares `links = "tch"`, so this script sees `DEP_TCH_LIBTORCH_LIB`: libtorch's
//! `lib` folder, with the headers in the `include` folder beside it (true of the torch wheel and
//! of the libtorch archive). The c10d headers include `<gloo/...>` headers that the wheel does not
//! ship: Debian's `libgloo-dev` supplies them in /usr/include/gloo (`make sysdeps` installs it).
//! The flags are torch-sys's own (C++17, the C++11 ABI, glog's export macro) plus
//! `USE_C10D_GLOO`, without which `ProcessGroupGloo.hpp` is empty. NCCL is not compiled in: its
//! header needs `nccl.h` and the CUDA toolkit headers (see `src/backend.rs`).
use std::path::PathBuf;

const GLOO_HEADER: &str = "/usr/include/gloo/config.h";

fn main() {
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not find libtorch"),
    );
    let include = lib
        .parent()
        .expect("libtorch's lib folder has a parent")
        .join("include");
    let api_include = include.join("torch/csrc/api/include");
    assert!(
        include
            .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
            .exists(),
        "c10d headers not found under {}: libtorch's include folder should sit beside {}",
        include.display(),
        lib.display()
    );
    assert!(
        std::path::Path::new(GLOO_HEADER).exists(),
        "{GLOO_HEADER} not found: install Debian's libgloo-dev (`make sysdeps` does)"
    );
    cc::Build::new()
        .cpp(true)
        .pic(true)
        // As system headers: the shim is compiled with warnings on, libtorch's headers are not
        // warning-clean (unused parameters, C++20 bit-field initialisers).
        .flag(format!("-isystem{}", include.display()))
        .flag(format!("-isystem{}", api_include.display()))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/c10d_shim.cpp")
        .compile("c10d_shim");
    // The libraries themselves (torch_cpu, torch, c10) are linked by torch-sys.
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
}
