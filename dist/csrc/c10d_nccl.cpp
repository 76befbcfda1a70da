// c10d_nccl.cpp: the NCCL half of albef-dist's c10d shim, built as a shared library (the "NCCL
// plugin") that csrc/c10d_shim.cpp loads with dlopen when a process group asks for NCCL.
//
// Why a separate library: ProcessGroupNCCL.hpp includes the CUDA toolkit's headers and nccl.h,
// which a CPU build machine does not have, and its constructor lives in libtorch_cuda.so, which
// albef only loads when a command asks for a CUDA device. Keeping NCCL out of the main shim lets
// one `cargo build` serve CPU and GPU machines; scripts/build-nccl-plugin compiles this file on a
// machine with the toolkit, against the same libtorch the albef binary runs on.
//
// The one entry point hands back the group as the shim's handle type (an owning pointer to
// c10::intrusive_ptr<c10d::Backend>), so the shim's collectives serve it as they serve Gloo.
// Errors come back as an owned C string (freed by the caller with free), never as an exception.

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

extern "C" char* albef_c10d_nccl_new(void* store, int rank, int size, int64_t timeout_ms,
                                     int device, void** out) {
  try {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        *static_cast<c10::intrusive_ptr<c10d::Store>*>(store), rank, size, opts);
    // Bound to this rank's GPU (LOCAL_RANK's): barriers and the communicator's set-up use it
    // instead of guessing a device from the rank.
    group->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
    *out = new c10::intrusive_ptr<c10d::Backend>(std::move(group));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception while creating the NCCL process group");
  }
}
