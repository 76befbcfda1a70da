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
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

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
#include <memory>
#include <mutex>
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

// ---------------------------------------------------------------------------------------------
// The overlapping reducer: DDP's gradient averaging that starts while backward still runs.
//
// Each parameter gets a post-accumulate-grad hook (libtorch's autograd calls it on the thread
// that accumulated the gradient, as soon as that parameter's .grad holds this backward's sum).
// Parameters are grouped into buckets in the order their gradients become ready; when every
// gradient of a bucket is ready and every earlier bucket has been launched, the bucket's
// gradients are copied into one flat tensor and its all-reduce (AVG) is started without waiting:
// Gloo runs it on its own threads, NCCL on its own CUDA stream, while autograd computes the
// gradients of earlier layers. `finish` waits for every bucket in order and writes the means
// back into the .grad tensors. Launching in bucket order keeps every rank's collectives in the
// same sequence.
//
// The readiness order is learned on the first armed backward: that step only records it (and
// reduces every bucket at `finish`, without overlap); rank 0's order is then broadcast, so every
// rank builds the same buckets. Only an armed backward (the last micro-batch of a step) reduces;
// the hooks of the others return at once. A parameter whose hook did not fire (no gradient this
// step) is reduced at `finish` with its accumulated .grad, or zeros.
namespace {

struct Reducer {
  GroupPtr group;
  std::vector<at::Tensor> params;
  int64_t bucket_bytes = 0;
  std::mutex mu;
  bool armed = false;
  std::vector<int64_t> seen;                 // readiness order observed (first armed step)
  std::vector<std::vector<int64_t>> buckets;  // parameter indices, launch order
  std::vector<int64_t> bucket_of;
  std::vector<int64_t> pending;  // per bucket: gradients not ready yet
  size_t next = 0;               // the next bucket to launch
  int64_t early = 0;             // buckets launched from a hook (during backward) this step
  int64_t last_early = 0;        // the same, for the last finished step
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::string error;

  void ready(int64_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || !error.empty()) return;
    if (buckets.empty()) {
      seen.push_back(i);
      return;
    }
    if (--pending[bucket_of[i]] == 0) launch_ready();
  }

  void launch_ready() {
    while (next < buckets.size() && pending[next] == 0) {
      launch(next++);
      early++;
    }
  }

  void launch(size_t b) {
    try {
      std::vector<at::Tensor> grads;
      for (int64_t i : buckets[b]) {
        const at::Tensor& g = params[i].grad();
        grads.push_back((g.defined() ? g : at::zeros_like(params[i])).reshape({-1}));
      }
      flats[b] = at::cat(grads);
      std::vector<at::Tensor> list{flats[b]};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::AVG;
      works[b] = group->allreduce(list, opts);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // Buckets over `order` (every parameter once): consecutive parameters of one dtype and
  // device, at most bucket_bytes each (1 MB for the first, as DDP, so communication starts early).
  void build(const std::vector<int64_t>& order) {
    int64_t cap = std::min<int64_t>(bucket_bytes, 1 << 20), bytes = 0;
    bucket_of.assign(params.size(), 0);
    for (int64_t i : order) {
      const at::Tensor& p = params[i];
      int64_t size = p.numel() * p.element_size();
      bool fits = !buckets.empty() && bytes + size <= cap &&
                  params[buckets.back().front()].scalar_type() == p.scalar_type() &&
                  params[buckets.back().front()].device() == p.device();
      if (!fits) {
        if (!buckets.empty()) cap = bucket_bytes;
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().push_back(i);
      bucket_of[i] = static_cast<int64_t>(buckets.size()) - 1;
      bytes += size;
    }
    flats.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), {});
  }

  // Rank 0's readiness order, with the parameters it never saw appended in index order.
  std::vector<int64_t> agreed_order() {
    std::vector<int64_t> order = seen;
    std::vector<bool> in(params.size(), false);
    for (int64_t i : order) in[i] = true;
    for (size_t i = 0; i < params.size(); i++)
      if (!in[i]) order.push_back(static_cast<int64_t>(i));
    at::Tensor t = at::tensor(order, at::kLong).to(params.front().device());
    std::vector<at::Tensor> list{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    group->broadcast(list, opts)->wait();
    t = t.cpu();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu);
    armed = false;
    if (buckets.empty()) build(agreed_order());
    // What did not launch during backward (the first step, parameters without a gradient).
    while (next < buckets.size() && error.empty()) launch(next++);
    for (auto& work : works)
      if (work) work->wait();
    if (!error.empty()) throw std::runtime_error(error);
    for (size_t b = 0; b < buckets.size(); b++) {
      int64_t offset = 0;
      for (int64_t i : buckets[b]) {
        at::Tensor& p = params[i];
        at::Tensor mean = flats[b].narrow(0, offset, p.numel()).view(p.sizes());
        offset += p.numel();
        if (p.grad().defined()) {
          p.mutable_grad().copy_(mean);
        } else {
          p.mutable_grad() = mean.clone();
        }
      }
    }
    reset();
  }

  void reset() {
    pending.assign(buckets.size(), 0);
    for (size_t b = 0; b < buckets.size(); b++) pending[b] = buckets[b].size();
    next = 0;
    last_early = early;
    early = 0;
    flats.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), {});
    seen.clear();
    error.clear();
  }
};

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  std::shared_ptr<Reducer> reducer;
  int64_t index;
  ReadyHook(std::shared_ptr<Reducer> r, int64_t i) : reducer(std::move(r)), index(i) {}
  void operator()(const torch::autograd::Variable&) override { reducer->ready(index); }
};

using ReducerPtr = std::shared_ptr<Reducer>;

}  // namespace

extern "C" {

// A reducer over `n` parameters (leaf tensors that require grad), in the same order on every
// rank, averaging over `group` in buckets of at most `bucket_bytes`.
char* c10d_reducer_new(void* group, at::Tensor** params, size_t n, int64_t bucket_bytes,
                       void** out) {
  return guarded([&] {
    if (n == 0) throw std::runtime_error("a reducer needs at least one parameter");
    auto reducer = std::make_shared<Reducer>();
    reducer->group = *static_cast<GroupPtr*>(group);
    reducer->params = tensor_list(params, n);
    reducer->bucket_bytes = std::max<int64_t>(bucket_bytes, 1);
    for (size_t i = 0; i < n; i++) {
      torch::autograd::impl::set_post_acc_grad_hooks(
          reducer->params[i], std::make_unique<ReadyHook>(reducer, static_cast<int64_t>(i)));
    }
    *out = new ReducerPtr(std::move(reducer));
  });
}

// Removes the hooks and frees the reducer.
void c10d_reducer_free(void* handle) {
  auto* reducer = static_cast<ReducerPtr*>(handle);
  for (auto& p : (*reducer)->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  delete reducer;
}

// The next backward produces this step's final gradients: reduce them as they become ready.
void c10d_reducer_arm(void* handle) {
  auto& reducer = *static_cast<ReducerPtr*>(handle);
  std::lock_guard<std::mutex> lock(reducer->mu);
  reducer->armed = true;
}

// After the armed backward: waits for every bucket and writes the means into the gradients.
// `early` receives how many buckets started during that backward (0 on the first step).
char* c10d_reducer_finish(void* handle, int64_t* early) {
  return guarded([&] {
    auto& reducer = *static_cast<ReducerPtr*>(handle);
    reducer->finish();
    *early = reducer->last_early;
  });
}

}  // extern "C"
