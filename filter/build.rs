//! Lets this crate's test binaries find libtorch without LD_LIBRARY_PATH (`make test` sets
//! none): embeds libtorch's folder, which torch-sys reports, as the runpath.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
