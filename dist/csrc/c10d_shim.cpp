// c10d_shim.cpp: a C ABI over libtorch's c10d (TCPStore, ProcessGroupGloo, and ProcessGroupNCCL
// through a plugin) for albef-dist.
//
// Why it exists: tch binds ATen but not torch.distributed; c10d itself is compiled into the
// libtorch_cpu.so that tch already links, and its headers ship with libtorch. This file is the
// whole C++ side: every function is `extern "C"`, takes tch's tensor handles (`at::Tensor*`,
// torch-sys's `C_tensor`) and opaque handles to a store or a process group, and returns NULL on
// success or an error message that the caller frees with `c10d_string_free`. Every body is wrapped
// in try/catch of std::exception: Gloo reports a dead peer as gloo::IoException, a
// std::runtime_error that is not a c10::Error, and no exception may cross into Rust (that would
// abort the process). The Rust side (src/ffi.rs, src/group.rs) turns messages into errors.
//
// Collectives are synchronous here: each call waits for its Work, so the Rust caller sees
// c10d's error at the call that failed. The group's timeout bounds every wait. (On NCCL, waiting
// for a Work makes the caller's CUDA stream wait for the collective, not the CPU: the kernels
// that follow are ordered after it, and the host runs ahead, as under torch.distributed.)
//
// NCCL is not compiled into this file: ProcessGroupNCCL.hpp needs the CUDA toolkit's headers.
// `c10d_nccl_new` loads csrc/c10d_nccl.cpp, built as a shared library on a machine that has them
// (scripts/build-nccl-plugin), with dlopen, the way libtorch_cuda.so itself is only loaded when a
// CUDA device is first asked for. Both groups are held as the common base class c10d::Backend,
// so every collective below serves either.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <dirent.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using StorePtr = c10::intrusive_ptr<c10d::Store>;
using GroupPtr = c10::intrusive_ptr<c10d::Backend>;

char* owned(const std::string& s) { return strdup(s.c_str()); }

// Runs `body`; returns NULL, or the exception's message as an owned C string.
template <typename F>
char* guarded(F body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return owned(e.what());
  } catch (...) {
    return owned("unknown C++ exception in c10d");
  }
}

std::vector<at::Tensor> tensor_list(at::Tensor** tensors, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; i++) list.push_back(*tensors[i]);  // shares storage
  return list;
}

// The TCP sockets this process has open: descriptor and inode (the inode tells a new socket
// from an old one that reused the descriptor).
std::map<int, ino_t> tcp_sockets() {
  std::map<int, ino_t> sockets;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return sockets;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    int fd = atoi(entry->d_name);
    int type = 0;
    socklen_t len = sizeof(type);
    struct stat st {};
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM &&
        fstat(fd, &st) == 0) {
      sockets[fd] = st.st_ino;
    }
  }
  closedir(dir);
  return sockets;
}

// "[ip]:port" of a socket's own end, as Gloo prints a peer's address in its errors; "" when
// it is not an IP socket.
std::string local_address(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "";
  char host[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  } else {
    return "";
  }
  return "[" + std::string(host) + "]:" + std::to_string(port);
}

// The local addresses, space-separated, of the TCP sockets opened since `before`: Gloo's
// listener and its connections to the peers. A peer whose connection to this rank breaks names
// one of them in its error ("Connection closed by peer [ip]:port"), which is how it finds the rank.
std::string addresses_since(const std::map<int, ino_t>& before) {
  std::set<std::string> addresses;
  for (const auto& [fd, inode] : tcp_sockets()) {
    auto old = before.find(fd);
    if (old != before.end() && old->second == inode) continue;
    std::string address = local_address(fd);
    if (!address.empty()) addresses.insert(address);
  }
  std::string joined;
  for (const auto& address : addresses) joined += (joined.empty() ? "" : " ") + address;
  return joined;
}

}  // namespace

extern "C" {

void c10d_string_free(char* s) { free(s); }

// A TCPStore: the server (which also serves this process) or a client of it; seen through
// `prefix` when it is not empty (torchrun's agent store keeps one namespace per attempt).
char* c10d_store_new(const char* host, uint16_t port, bool is_server, int world_size,
                     int64_t timeout_ms, const char* prefix, void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server;
    opts.numWorkers = world_size;
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    StorePtr store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), std::move(store));
    }
    *out = new StorePtr(std::move(store));
  });
}

void c10d_store_free(void* store) { delete static_cast<StorePtr*>(store); }

char* c10d_store_set(void* store, const char* key, const char* value) {
  return guarded([&] {
    std::string v(value);
    (*static_cast<StorePtr*>(store))->set(key, std::vector<uint8_t>(v.begin(), v.end()));
  });
}

// Waits (up to the store's timeout) for `key` and returns its value as an owned C string.
char* c10d_store_get(void* store, const char* key, char** value) {
  return guarded([&] {
    std::vector<uint8_t> v = (*static_cast<StorePtr*>(store))->get(key);
    *value = owned(std::string(v.begin(), v.end()));
  });
}

// A Gloo process group over `store`, listening on `interface`'s address when it is not empty,
// else on `hostname` (an address literal or a name). `addresses` receives the local addresses of
// the group's sockets (see addresses_since; "" when none were found); the caller frees it.
char* c10d_gloo_new(void* store, int rank, int size, int64_t timeout_ms, const char* hostname,
                    const char* interface, void** out, char** addresses) {
  return guarded([&] {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    std::map<int, ino_t> before = tcp_sockets();
    opts->devices.push_back(*interface != '\0'
                                ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                : c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    // The constructor connects every pair of ranks (a full mesh) before it returns.
    GroupPtr group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        *static_cast<StorePtr*>(store), rank, size, opts);
    *addresses = owned(addresses_since(before));
    *out = new GroupPtr(std::move(group));
  });
}

// The plugin's entry point (csrc/c10d_nccl.cpp): an NCCL group over `store` (a StorePtr*) bound
// to CUDA device `device`, returned in `out` as a GroupPtr*; NULL or an error message.
using NcclNew = char* (*)(void* store, int rank, int size, int64_t timeout_ms, int device,
                          void** out);

// An NCCL process group, made by the plugin at `plugin` (a shared library built from
// csrc/c10d_nccl.cpp against this libtorch). The library stays loaded for the process's life.
char* c10d_nccl_new(const char* plugin, void* store, int rank, int size, int64_t timeout_ms,
                    int device, void** out) {
  return guarded([&] {
    void* library = dlopen(plugin, RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr) {
      throw std::runtime_error(std::string("cannot load the NCCL plugin: ") + dlerror());
    }
    auto make = reinterpret_cast<NcclNew>(dlsym(library, "albef_c10d_nccl_new"));
    if (make == nullptr) {
      throw std::runtime_error(std::string(plugin) + " has no albef_c10d_nccl_new: not an "
                               "albef NCCL plugin");
    }
    if (char* err = make(store, rank, size, timeout_ms, device, out)) {
      std::string message(err);
      free(err);
      throw std::runtime_error(message);
    }
  });
}

void c10d_group_free(void* group) { delete static_cast<GroupPtr*>(group); }

// In-place all-reduce of `n` tensors; op 0 is SUM, 1 is AVG.
char* c10d_allreduce(void* group, at::Tensor** tensors, size_t n, int op) {
  return guarded([&] {
    std::vector<at::Tensor> list = tensor_list(tensors, n);
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == 1 ? c10d::ReduceOp::AVG : c10d::ReduceOp::SUM;
    (*static_cast<GroupPtr*>(group))->allreduce(list, opts)->wait();
  });
}

// In-place broadcast of `n` tensors from rank `root`.
char* c10d_broadcast(void* group, at::Tensor** tensors, size_t n, int root) {
  return guarded([&] {
    std::vector<at::Tensor> list = tensor_list(tensors, n);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    (*static_cast<GroupPtr*>(group))->broadcast(list, opts)->wait();
  });
}

// Gathers every rank's `input` into `output` (world size times its numel), in rank order.
char* c10d_allgather(void* group, at::Tensor* output, at::Tensor* input) {
  return guarded([&] { (*static_cast<GroupPtr*>(group))->_allgather_base(*output, *input)->wait(); });
}

char* c10d_barrier(void* group) {
  return guarded([&] { (*static_cast<GroupPtr*>(group))->barrier()->wait(); });
}

}  // extern "C"
