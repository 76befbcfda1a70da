//! The Rust face of `csrc/c10d_shim.cpp`: owned handles to a c10d store and a process group
//! (Gloo, or NCCL through the plugin), freed on drop, whose calls return c10d's error message as
//! a `String`.
//!
//! Only `group.rs` uses this module; it turns the raw messages into errors that say which rank
//! is gone (see `fault.rs`). Tensors cross as tch's `C_tensor` pointers, which are `at::Tensor*`
//! on the C++ side; the shim builds tensors that share their storage, so in-place collectives
//! write straight into the caller's tensors.
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{self, NonNull};
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::interface::GlooDevice;

extern "C" {
    fn c10d_string_free(s: *mut c_char);
    fn c10d_store_new(
        host: *const c_char,
        port: u16,
        is_server: bool,
        world_size: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn c10d_store_free(store: *mut c_void);
    fn c10d_store_set(store: *mut c_void, key: *const c_char, value: *const c_char) -> *mut c_char;
    fn c10d_store_get(
        store: *mut c_void,
        key: *const c_char,
        value: *mut *mut c_char,
    ) -> *mut c_char;
    fn c10d_gloo_new(
        store: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        hostname: *const c_char,
        interface: *const c_char,
        out: *mut *mut c_void,
        addresses: *mut *mut c_char,
    ) -> *mut c_char;
    fn c10d_nccl_new(
        plugin: *const c_char,
        store: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        device: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn c10d_group_free(group: *mut c_void);
    fn c10d_allreduce(
        group: *mut c_void,
        tensors: *mut *mut C_tensor,
        n: usize,
        op: c_int,
    ) -> *mut c_char;
    fn c10d_broadcast(
        group: *mut c_void,
        tensors: *mut *mut C_tensor,
        n: usize,
        root: c_int,
    ) -> *mut c_char;
    fn c10d_allgather(
        group: *mut c_void,
        output: *mut C_tensor,
        input: *mut C_tensor,
    ) -> *mut c_char;
    fn c10d_barrier(group: *mut c_void) -> *mut c_char;
    fn c10d_reducer_new(
        group: *mut c_void,
        params: *mut *mut C_tensor,
        n: usize,
        bucket_bytes: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn c10d_reducer_free(reducer: *mut c_void);
    fn c10d_reducer_arm(reducer: *mut c_void);
    fn c10d_reducer_finish(reducer: *mut c_void, early: *mut i64) -> *mut c_char;
}

/// A reduction the shim knows (its `op` argument).
#[derive(Clone, Copy)]
pub(crate) enum ReduceOp {
    Sum = 0,
    Avg = 1,
}

/// Takes ownership of a string the shim allocated.
unsafe fn take_string(s: *mut c_char) -> String {
    let text = CStr::from_ptr(s).to_string_lossy().into_owned();
    c10d_string_free(s);
    text
}

/// NULL is success; anything else is c10d's message.
fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        Ok(())
    } else {
        // SAFETY: a non-NULL return is a string the shim allocated for us to free.
        Err(unsafe { take_string(err) })
    }
}

fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// A c10d TCPStore: where ranks meet to set up the group.
pub(crate) struct Store(NonNull<c_void>);

impl Store {
    /// Connects to (or, with `is_server`, serves) the store at `host:port`, seen through
    /// `prefix` when it is not empty.
    pub(crate) fn connect(
        host: &str,
        port: u16,
        is_server: bool,
        world_size: usize,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Self, String> {
        let (host, prefix) = (c_string(host)?, c_string(prefix)?);
        let size = c_int::try_from(world_size).map_err(|e| e.to_string())?;
        let mut out = ptr::null_mut();
        // SAFETY: valid C strings and out-pointer; the shim sets `out` only on success.
        check(unsafe {
            c10d_store_new(
                host.as_ptr(),
                port,
                is_server,
                size,
                millis(timeout),
                prefix.as_ptr(),
                &mut out,
            )
        })?;
        Ok(Store(NonNull::new(out).expect("c10d_store_new succeeded")))
    }

    pub(crate) fn set(&self, key: &str, value: &str) -> Result<(), String> {
        let (key, value) = (c_string(key)?, c_string(value)?);
        // SAFETY: live handle, valid C strings.
        check(unsafe { c10d_store_set(self.0.as_ptr(), key.as_ptr(), value.as_ptr()) })
    }

    /// Waits for `key` up to the store's timeout.
    pub(crate) fn get(&self, key: &str) -> Result<String, String> {
        let key = c_string(key)?;
        let mut value = ptr::null_mut();
        // SAFETY: live handle, valid C string; `value` is set (and ours to free) on success.
        check(unsafe { c10d_store_get(self.0.as_ptr(), key.as_ptr(), &mut value) })?;
        Ok(unsafe { take_string(value) })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from c10d_store_new and is freed once.
        unsafe { c10d_store_free(self.0.as_ptr()) }
    }
}

/// A c10d process group (ProcessGroupGloo or ProcessGroupNCCL). Its calls wait for the
/// collective to finish (on NCCL: the caller's CUDA stream waits, see the shim).
pub(crate) struct Group(NonNull<c_void>);

// SAFETY: c10d process groups are thread-safe (torch.distributed calls them from any thread);
// the handle is only an owning pointer.
unsafe impl Send for Group {}
unsafe impl Send for Store {}

fn c_int_of(n: usize) -> Result<c_int, String> {
    c_int::try_from(n).map_err(|e| e.to_string())
}

impl Group {
    /// A Gloo group, and the local addresses of its sockets, space-separated: how its peers see this
    /// rank ("" when none were found).
    pub(crate) fn gloo(
        store: &Store,
        rank: usize,
        size: usize,
        timeout: Duration,
        device: &GlooDevice,
    ) -> Result<(Self, String), String> {
        let (hostname, interface) = match device {
            GlooDevice::Host(host) => (c_string(host)?, c_string("")?),
            GlooDevice::Interface(name) => (c_string("")?, c_string(name)?),
        };
        let (rank, size) = (c_int_of(rank)?, c_int_of(size)?);
        let (mut out, mut addresses) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: live store handle, valid C string; both outputs are set on success.
        check(unsafe {
            c10d_gloo_new(
                store.0.as_ptr(),
                rank,
                size,
                millis(timeout),
                hostname.as_ptr(),
                interface.as_ptr(),
                &mut out,
                &mut addresses,
            )
        })?;
        let addresses = unsafe { take_string(addresses) };
        Ok((
            Group(NonNull::new(out).expect("c10d_gloo_new succeeded")),
            addresses,
        ))
    }

    /// An NCCL group bound to CUDA device `device`, made by the plugin library at `plugin`
    /// (built from `csrc/c10d_nccl.cpp`).
    pub(crate) fn nccl(
        plugin: &str,
        store: &Store,
        rank: usize,
        size: usize,
        timeout: Duration,
        device: usize,
    ) -> Result<Self, String> {
        let plugin = c_string(plugin)?;
        let (rank, size, device) = (c_int_of(rank)?, c_int_of(size)?, c_int_of(device)?);
        let mut out = ptr::null_mut();
        // SAFETY: live store handle, valid C string; `out` is set on success.
        check(unsafe {
            c10d_nccl_new(
                plugin.as_ptr(),
                store.0.as_ptr(),
                rank,
                size,
                millis(timeout),
                device,
                &mut out,
            )
        })?;
        Ok(Group(NonNull::new(out).expect("c10d_nccl_new succeeded")))
    }

    pub(crate) fn all_reduce(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<(), String> {
        let mut ptrs: Vec<*mut C_tensor> = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        // SAFETY: live handle; the pointers are live tensors borrowed for the call.
        check(unsafe {
            c10d_allreduce(self.0.as_ptr(), ptrs.as_mut_ptr(), ptrs.len(), op as c_int)
        })
    }

    pub(crate) fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), String> {
        let root = c_int_of(root)?;
        let mut ptrs: Vec<*mut C_tensor> = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        // SAFETY: as in all_reduce.
        check(unsafe { c10d_broadcast(self.0.as_ptr(), ptrs.as_mut_ptr(), ptrs.len(), root) })
    }

    /// `output` holds world size times `input`'s rows, filled in rank order.
    pub(crate) fn all_gather(&self, output: &mut Tensor, input: &Tensor) -> Result<(), String> {
        // SAFETY: live handle and tensors; the shim only reads `input`.
        check(unsafe {
            c10d_allgather(
                self.0.as_ptr(),
                output.as_mut_ptr(),
                input.as_ptr() as *mut C_tensor,
            )
        })
    }

    pub(crate) fn barrier(&self) -> Result<(), String> {
        // SAFETY: live handle.
        check(unsafe { c10d_barrier(self.0.as_ptr()) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle came from c10d_gloo_new or c10d_nccl_new and is freed once.
        unsafe { c10d_group_free(self.0.as_ptr()) }
    }
}

/// The shim's overlapping reducer: hooks on the parameters that start each bucket's all-reduce
/// as soon as its gradients are ready (see csrc/c10d_shim.cpp).
pub(crate) struct Reducer(NonNull<c_void>);

// SAFETY: the reducer guards its state with a mutex; the handle is only an owning pointer.
unsafe impl Send for Reducer {}

impl Reducer {
    /// Hooks `params` (the same order on every rank) to average over `group`.
    pub(crate) fn new(
        group: &Group,
        params: &[Tensor],
        bucket_bytes: usize,
    ) -> Result<Self, String> {
        let mut ptrs: Vec<*mut C_tensor> = params.iter().map(|t| t.as_ptr() as *mut _).collect();
        let bytes = i64::try_from(bucket_bytes).unwrap_or(i64::MAX);
        let mut out = ptr::null_mut();
        // SAFETY: live group handle and tensors; the shim keeps its own references.
        check(unsafe {
            c10d_reducer_new(
                group.0.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                bytes,
                &mut out,
            )
        })?;
        Ok(Reducer(
            NonNull::new(out).expect("c10d_reducer_new succeeded"),
        ))
    }

    pub(crate) fn arm(&self) {
        // SAFETY: live handle.
        unsafe { c10d_reducer_arm(self.0.as_ptr()) }
    }

    /// Waits for the step's all-reduces; returns how many buckets started during backward.
    pub(crate) fn finish(&self) -> Result<usize, String> {
        let mut early = 0i64;
        // SAFETY: live handle and out-pointer.
        check(unsafe { c10d_reducer_finish(self.0.as_ptr(), &mut early) })?;
        Ok(early as usize)
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: the handle came from c10d_reducer_new and is freed once.
        unsafe { c10d_reducer_free(self.0.as_ptr()) }
    }
}
