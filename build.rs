//! Makes `target/release/albef` run without LD_LIBRARY_PATH: embeds libtorch's folder as the
//! runpath, and keeps libtorch_cuda.so as NEEDED (rustc links with --as-needed, which would
//! otherwise drop it and leave tch without CUDA on a GPU machine).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
