//! Makes `target/release/albef` run without LD_LIBRARY_PATH: embeds libtorch's folder as the
//! runpath. libtorch_cuda.so is not linked at start (rustc links with --as-needed, which drops
//! it): the first CUDA device asked for loads it from that folder (train/src/cuda.rs).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
