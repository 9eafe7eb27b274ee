// Native kernels for chatrl's TensorFlow.js engine: matrix products through OpenBLAS.
// Every function works in place on Float32Array views that the caller allocated (tensor data of
// the cpu backend, or views into the wasm backend's heap), so no tensor is copied.
//
// OpenBLAS is opened with dlopen rather than linked: a DYNAMIC_ARCH OpenBLAS picks its kernels
// by CPU model when it loads, and a build older than the CPU (Debian 12's 0.3.21 on a Sapphire
// Rapids Xeon) falls back to its SSE3 "Prescott" kernels, 5x slower than its AVX-512 ones. When
// the user has not chosen a core type with OPENBLAS_CORETYPE, we choose one from the CPU's
// features before the library initialises.
#include <dlfcn.h>
#include <napi.h>

// GCC 12 warns about its own AVX-512 helpers (_mm512_reduce_add_ps) under -O3: not our code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <string>
#include <thread>
#include <vector>

namespace {

// CBLAS enum values (cblas.h), so that no BLAS header is needed to build.
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                         int, float, float*, int);
using SetThreadsFn = void (*)(int);
using GetIntFn = int (*)();
using GetStringFn = char* (*)();

struct Blas {
  SgemmFn sgemm = nullptr;
  SetThreadsFn setThreads = nullptr;
  GetIntFn getThreads = nullptr;
  GetStringFn config = nullptr;
  GetStringFn coreName = nullptr;
  std::string chosenCore;  // what we set OPENBLAS_CORETYPE to, "" when we left it alone
};

Blas blas;

// The widest OpenBLAS core type whose kernels this CPU can run.
const char* CoreTypeForThisCpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

std::string LoadBlas() {
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    if (const char* core = CoreTypeForThisCpu()) {
      setenv("OPENBLAS_CORETYPE", core, 0);
      blas.chosenCore = core;
    }
  }
  void* lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return std::string("cannot open libopenblas.so.0: ") + dlerror();
  blas.sgemm = reinterpret_cast<SgemmFn>(dlsym(lib, "cblas_sgemm"));
  blas.setThreads = reinterpret_cast<SetThreadsFn>(dlsym(lib, "openblas_set_num_threads"));
  blas.getThreads = reinterpret_cast<GetIntFn>(dlsym(lib, "openblas_get_num_threads"));
  blas.config = reinterpret_cast<GetStringFn>(dlsym(lib, "openblas_get_config"));
  blas.coreName = reinterpret_cast<GetStringFn>(dlsym(lib, "openblas_get_corename"));
  if (!blas.sgemm || !blas.setThreads || !blas.getThreads || !blas.config || !blas.coreName) {
    return "libopenblas.so.0 lacks cblas_sgemm or the openblas_* thread functions";
  }
  return "";
}

float* FloatData(const Napi::Value& v, size_t need, const char* name, Napi::Env env) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    Napi::TypeError::New(env, std::string(name) + " must be a Float32Array")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  auto arr = v.As<Napi::Float32Array>();
  if (arr.ElementLength() < need) {
    Napi::RangeError::New(env, std::string(name) + " is smaller than its shape says")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  return arr.Data();
}


int64_t Int(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int64Value(); }

bool CheckArgs(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() == n) return true;
  Napi::TypeError::New(info.Env(), std::string(fn) + " expects " + std::to_string(n) + " arguments")
      .ThrowAsJavaScriptException();
  return false;
}

// Threads the caller allows: for OpenBLAS's own products and for our parallel loops.
int workerThreads = 1;

// Below this many multiply-adds (about 20 us of one core's work) a product runs on one thread:
// waking a pool thread costs more than it saves. A decode step of one row stays on one thread;
// one of 16 rows (products of 3-4 M multiply-adds) uses two.
constexpr int64_t kParallelMinWork = int64_t{1} << 20;

// Threads that live as long as the process and run the parts of a parallel loop. Starting a
// thread per loop costs ~40 us, as much as a whole decode-sized product; a woken pool thread
// costs a few. After a part a pool thread spins for a short while (decoding calls the kernels
// back to back) and then sleeps, so an idle process does not keep the other core busy. The
// caller runs part 0 and then any part no pool thread has started yet: on a busy machine a
// pool thread that is not scheduled in time costs nothing but the split.
class WorkerPool {
 public:
  static constexpr int kMaxParts = 64;

  WorkerPool() {
    for (auto& state : state_) state.store(kDone, std::memory_order_relaxed);
  }

  // Runs task(w) for w in [0, parts), each part once, on this thread and pool threads.
  void Run(int parts, const std::function<void(int)>& task) {
    parts = std::min(parts, kMaxParts);
    if (parts <= 1) {
      task(0);
      return;
    }
    while (static_cast<int>(threads_.size()) < parts - 1) {
      const int index = static_cast<int>(threads_.size()) + 1;
      // The thread starts from the generation before this task's, so it sees this one.
      const uint64_t before = generation_.load(std::memory_order_acquire);
      threads_.emplace_back([this, index, before] { Loop(index, before); });
      threads_.back().detach();
    }
    task_ = &task;
    parts_.store(parts, std::memory_order_relaxed);
    for (int w = 1; w < parts; ++w) state_[w].store(kFree, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    task(0);
    for (int w = 1; w < parts; ++w) {
      if (Claim(w)) {
        task(w);
        state_[w].store(kDone, std::memory_order_release);
      }
    }
    for (int w = 1; w < parts; ++w) {
      while (state_[w].load(std::memory_order_acquire) != kDone) _mm_pause();
    }
  }

 private:
  static constexpr int kFree = 0, kTaken = 1, kDone = 2;
  static constexpr auto kSpin = std::chrono::microseconds(50);

  bool Claim(int w) {
    int expected = kFree;
    return state_[w].compare_exchange_strong(expected, kTaken, std::memory_order_acq_rel);
  }

  void Loop(int index, uint64_t seen) {
    for (;;) {
      uint64_t now = generation_.load(std::memory_order_acquire);
      const auto until = std::chrono::steady_clock::now() + kSpin;
      for (int spins = 0; now == seen; ++spins) {
        _mm_pause();
        if ((spins & 63) == 63 && std::chrono::steady_clock::now() > until) break;
        now = generation_.load(std::memory_order_acquire);
      }
      if (now == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        now = generation_.load(std::memory_order_acquire);
      }
      seen = now;
      // A part is claimed before the task is read: a thread that woke late either finds its
      // part taken (by the caller) or claims the current task's.
      if (index < parts_.load(std::memory_order_acquire) && Claim(index)) {
        (*task_)(index);
        state_[index].store(kDone, std::memory_order_release);
      }
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> parts_{0};
  std::atomic<int> state_[kMaxParts];
  const std::function<void(int)>* task_ = nullptr;
};

// Never destroyed: its threads may still wait on its mutex while the process exits.
WorkerPool& workerPool = *new WorkerPool();

// Sets OpenBLAS's thread count for one product when it differs from what is set.
int blasThreadsNow = -1;
void UseBlasThreads(int n) {
  if (n != blasThreadsNow) {
    blas.setThreads(n);
    blasThreadsNow = n;
  }
}

void Gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc) {
  blas.sgemm(kRowMajor, transA ? kTrans : kNoTrans, transB ? kTrans : kNoTrans, m, n, k, alpha, a,
             lda, b, ldb, beta, c, ldc);
}

// A product on as many threads as its size is worth. We split it ourselves (rows of the result,
// or columns when it is wide) and run single-threaded OpenBLAS on each part: OpenBLAS's own
// threads busy-wait between products, which costs the other core all through the non-BLAS
// parts of a training step.
void SizedGemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* a,
               int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  const int64_t work = static_cast<int64_t>(m) * n * k;
  UseBlasThreads(1);
  const int workers = work >= kParallelMinWork ? workerThreads : 1;
  if (workers <= 1) {
    Gemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const bool byRows = m >= n;
  const int extent = byRows ? m : n;
  const int chunk = (extent + workers - 1) / workers;
  auto part = [&](int w) {
    const int from = w * chunk;
    const int size = std::min(chunk, extent - from);
    if (size <= 0) return;
    if (byRows) {
      const float* aPart = transA ? a + from : a + static_cast<int64_t>(from) * lda;
      Gemm(transA, transB, size, n, k, alpha, aPart, lda, b, ldb, beta,
           c + static_cast<int64_t>(from) * ldc, ldc);
    } else {
      const float* bPart = transB ? b + static_cast<int64_t>(from) * ldb : b + from;
      Gemm(transA, transB, m, size, k, alpha, a, lda, bPart, ldb, beta, c + from, ldc);
    }
  };
  workerPool.Run(workers, part);
}

// `work` is the multiply-adds of all iterations together; small loops stay on this thread.
// Each part takes the next iteration left: a pool thread that wakes late (it sleeps between
// decode steps, and on a busy machine waits for a core) finds less to do rather than holding
// up the caller, who has done the rest meanwhile. Iterations write disjoint outputs, so who
// runs one does not change its numbers.
template <typename Body>
void ParallelFor(int64_t count, int64_t work, Body body) {
  UseBlasThreads(1);
  const int workers = work < kParallelMinWork
                          ? 1
                          : static_cast<int>(std::min<int64_t>(workerThreads, count));
  if (workers <= 1) {
    for (int64_t i = 0; i < count; ++i) body(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  workerPool.Run(workers, [&](int w) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < count;
         i = next.fetch_add(1, std::memory_order_relaxed))
      body(i, w);
  });
}

// Element loops (norms, losses, optimizer, layout moves) split into contiguous ranges once
// they touch this many elements; below it a second thread costs more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 18;

// Runs body(from, to, worker) over [0, count) in up to workerThreads contiguous ranges.
template <typename Body>
void ParallelRanges(int64_t count, int64_t elements, Body body) {
  const int workers = elements < kParallelMinElements
                          ? 1
                          : static_cast<int>(std::min<int64_t>(workerThreads, count));
  if (workers <= 1) {
    body(int64_t{0}, count, 0);
    return;
  }
  const int64_t chunk = (count + workers - 1) / workers;
  workerPool.Run(workers, [&](int w) {
    const int64_t from = w * chunk, to = std::min(count, from + chunk);
    if (from < to) body(from, to, w);
  });
}

// batchMatMul(a, b, out, batchA, batchB, m, n, k, transA, transB)
// Row-major: out[i] = op(a[i]) @ op(b[i]), where op transposes when its flag is set, a[i] is
// [m, k] (or [k, m] transposed), b[i] is [k, n] (or [n, k]), out[i] is [m, n]. A batch of 1
// broadcasts over the other operand's batch.
Napi::Value BatchMatMul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 10, "batchMatMul")) return env.Undefined();
  const int64_t batchA = Int(info, 3), batchB = Int(info, 4);
  const int m = Int(info, 5), n = Int(info, 6), k = Int(info, 7);
  const bool transA = info[8].As<Napi::Boolean>().Value();
  const bool transB = info[9].As<Napi::Boolean>().Value();
  const int64_t batch = std::max(batchA, batchB);
  if ((batchA != batch && batchA != 1) || (batchB != batch && batchB != 1) || m < 0 || n < 0 ||
      k < 0) {
    Napi::RangeError::New(env, "batchMatMul: batch sizes do not broadcast")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const float* a = FloatData(info[0], batchA * m * k, "a", env);
  const float* b = a ? FloatData(info[1], batchB * k * n, "b", env) : nullptr;
  float* out = b ? FloatData(info[2], batch * m * n, "out", env) : nullptr;
  if (out == nullptr || m == 0 || n == 0) return env.Undefined();
  const int64_t strideA = batchA == 1 ? 0 : static_cast<int64_t>(m) * k;
  const int64_t strideB = batchB == 1 ? 0 : static_cast<int64_t>(k) * n;
  const int64_t strideC = static_cast<int64_t>(m) * n;
  if (batch == 1) {
    SizedGemm(transA, transB, m, n, k, 1.0f, a, transA ? m : k, b, transB ? k : n, 0.0f, out, n);
    return env.Undefined();
  }
  ParallelFor(batch, batch * m * n * k, [&](int64_t i, int) {
    Gemm(transA, transB, m, n, k, 1.0f, a + i * strideA, transA ? m : k, b + i * strideB,
         transB ? k : n, 0.0f, out + i * strideC, n);
  });
  return env.Undefined();
}

// linear(x, w, bias | null, out, rows, in, outDim): out = x @ w + bias, x: [rows, in],
// w: [in, outDim]. The bias is written first and sgemm adds the product to it (beta = 1).
Napi::Value Linear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 7, "linear")) return env.Undefined();
  const int64_t rows = Int(info, 4), in = Int(info, 5), outDim = Int(info, 6);
  const float* x = FloatData(info[0], rows * in, "x", env);
  const float* w = x ? FloatData(info[1], in * outDim, "w", env) : nullptr;
  if (w == nullptr) return env.Undefined();
  const bool hasBias = !info[2].IsNull() && !info[2].IsUndefined();
  const float* bias = hasBias ? FloatData(info[2], outDim, "bias", env) : nullptr;
  if (hasBias && bias == nullptr) return env.Undefined();
  float* out = FloatData(info[3], rows * outDim, "out", env);
  if (out == nullptr || rows == 0 || outDim == 0) return env.Undefined();
  if (hasBias) {
    for (int64_t r = 0; r < rows; ++r) std::copy(bias, bias + outDim, out + r * outDim);
  }
  if (in == 0) {
    if (!hasBias) std::fill(out, out + rows * outDim, 0.0f);
    return env.Undefined();
  }
  SizedGemm(false, false, rows, outDim, in, 1.0f, x, in, w, outDim, hasBias ? 1.0f : 0.0f, out,
            outDim);
  return env.Undefined();
}

// columnSum(x, out, rows, cols): out[j] = sum_i x[i, j] (the gradient of a broadcast bias).
Napi::Value ColumnSum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 4, "columnSum")) return env.Undefined();
  const int64_t rows = Int(info, 2), cols = Int(info, 3);
  const float* x = FloatData(info[0], rows * cols, "x", env);
  float* out = x ? FloatData(info[1], cols, "out", env) : nullptr;
  if (out == nullptr) return env.Undefined();
  std::fill(out, out + cols, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    for (int64_t j = 0; j < cols; ++j) out[j] += row[j];
  }
  return env.Undefined();
}

// Queries per block of the attention loops: block b only multiplies with the keys its last
// query can see, which skips about 3/8 of the products at 128 positions.
constexpr int kQueryBlock = 32;

// Keys visible to the first `queries` queries of tq (query i sees keys 0..tk - tq + i).
int VisibleKeys(int queries, int tq, int tk) { return std::min(tk, std::max(0, tk - tq + queries)); }

// Causal softmax in place of `rows` rows of scores (row stride tk), the first being query
// `first` of tq. Keys a query cannot see get probability 0.
void CausalSoftmaxRows(float* p, int rows, int tk, int first, int tq) {
  for (int r = 0; r < rows; ++r) {
    float* row = p + static_cast<int64_t>(r) * tk;
    const int seen = VisibleKeys(first + r + 1, tq, tk);
    float mx = -INFINITY;
    for (int j = 0; j < seen; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int j = 0; j < seen; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = seen > 0 ? 1.0f / sum : 0.0f;
    for (int j = 0; j < seen; ++j) row[j] *= inv;
    std::fill(row + seen, row + tk, 0.0f);
  }
}

// attentionForward(q, k, v, out, probs, bh, tq, tk, hs, scale)
// Per head: probs = causalSoftmax(scale * q @ k^T) [tq, tk]; out = probs @ v [tq, hs].
Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 10, "attentionForward")) return env.Undefined();
  const int64_t bh = Int(info, 5);
  const int tq = Int(info, 6), tk = Int(info, 7), hs = Int(info, 8);
  const float scale = info[9].As<Napi::Number>().FloatValue();
  const float* q = FloatData(info[0], bh * tq * hs, "q", env);
  const float* k = q ? FloatData(info[1], bh * tk * hs, "k", env) : nullptr;
  const float* v = k ? FloatData(info[2], bh * tk * hs, "v", env) : nullptr;
  float* out = v ? FloatData(info[3], bh * tq * hs, "out", env) : nullptr;
  float* probs = out ? FloatData(info[4], bh * tq * tk, "probs", env) : nullptr;
  if (probs == nullptr) return env.Undefined();
  if (tq == 0 || tk == 0 || hs == 0) {
    std::fill(out, out + bh * tq * hs, 0.0f);
    return env.Undefined();
  }
  ParallelFor(bh, bh * tq * tk * hs * 2, [&](int64_t i, int) {
    float* p = probs + i * tq * tk;
    const float* qi = q + i * tq * hs;
    const float* ki = k + i * tk * hs;
    const float* vi = v + i * tk * hs;
    float* oi = out + i * tq * hs;
    if (tq == 1) {
      // A decode step: one query sees every key. Plain loops: two sgemm calls with m = 1 per
      // head cost more in call overhead than the products themselves.
      for (int j = 0; j < tk; ++j) {
        const float* kj = ki + static_cast<int64_t>(j) * hs;
        // Eight partial sums: the compiler vectorizes them (one sum would be a serial chain).
        float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int d = 0;
        for (; d + 8 <= hs; d += 8)
          for (int u = 0; u < 8; ++u) part[u] += qi[d + u] * kj[d + u];
        float dot = ((part[0] + part[1]) + (part[2] + part[3])) +
                    ((part[4] + part[5]) + (part[6] + part[7]));
        for (; d < hs; ++d) dot += qi[d] * kj[d];
        p[j] = scale * dot;
      }
      CausalSoftmaxRows(p, 1, tk, 0, 1);
      std::fill(oi, oi + hs, 0.0f);
      for (int j = 0; j < tk; ++j) {
        const float pj = p[j];
        const float* vj = vi + static_cast<int64_t>(j) * hs;
        for (int d = 0; d < hs; ++d) oi[d] += pj * vj[d];
      }
      return;
    }
    // Query blocks see a growing prefix of the keys: skip the products with keys they cannot see.
    for (int r0 = 0; r0 < tq; r0 += kQueryBlock) {
      const int rows = std::min(kQueryBlock, tq - r0);
      const int keys = VisibleKeys(r0 + rows, tq, tk);
      float* pb = p + static_cast<int64_t>(r0) * tk;
      if (keys > 0) {
        Gemm(false, true, rows, keys, hs, scale, qi + static_cast<int64_t>(r0) * hs, hs, ki, hs,
             0.0f, pb, tk);
      }
      CausalSoftmaxRows(pb, rows, tk, r0, tq);
      if (keys > 0) {
        Gemm(false, false, rows, hs, keys, 1.0f, pb, tk, vi, hs, 0.0f,
             oi + static_cast<int64_t>(r0) * hs, hs);
      } else {
        std::fill(oi + static_cast<int64_t>(r0) * hs, oi + static_cast<int64_t>(r0 + rows) * hs,
                  0.0f);
      }
    }
  });
  return env.Undefined();
}

// attentionBackward(q, k, v, probs, dOut, dq, dk, dv, bh, tq, tk, hs, scale)
// dv = P^T dO; dP = dO v^T; dS = P * (dP - rowsum(dP * P)); dq = scale dS k; dk = scale dS^T q.
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 13, "attentionBackward")) return env.Undefined();
  const int64_t bh = Int(info, 8);
  const int tq = Int(info, 9), tk = Int(info, 10), hs = Int(info, 11);
  const float scale = info[12].As<Napi::Number>().FloatValue();
  const int64_t qn = bh * tq * hs, kn = bh * tk * hs;
  const float* q = FloatData(info[0], qn, "q", env);
  const float* k = q ? FloatData(info[1], kn, "k", env) : nullptr;
  const float* v = k ? FloatData(info[2], kn, "v", env) : nullptr;
  const float* probs = v ? FloatData(info[3], bh * tq * tk, "probs", env) : nullptr;
  const float* dOut = probs ? FloatData(info[4], qn, "dOut", env) : nullptr;
  float* dq = dOut ? FloatData(info[5], qn, "dq", env) : nullptr;
  float* dk = dq ? FloatData(info[6], kn, "dk", env) : nullptr;
  float* dv = dk ? FloatData(info[7], kn, "dv", env) : nullptr;
  if (dv == nullptr) return env.Undefined();
  if (tq == 0 || tk == 0 || hs == 0) {
    std::fill(dq, dq + qn, 0.0f);
    std::fill(dk, dk + kn, 0.0f);
    std::fill(dv, dv + kn, 0.0f);
    return env.Undefined();
  }
  std::vector<std::vector<float>> scratch(std::max(1, workerThreads),
                                          std::vector<float>(static_cast<size_t>(tq) * tk));
  ParallelFor(bh, bh * tq * tk * hs * 4, [&](int64_t i, int worker) {
    const float* p = probs + i * tq * tk;
    const float* dO = dOut + i * tq * hs;
    const float* qi = q + i * tq * hs;
    const float* ki = k + i * tk * hs;
    const float* vi = v + i * tk * hs;
    float* dqi = dq + i * tq * hs;
    float* dki = dk + i * tk * hs;
    float* dvi = dv + i * tk * hs;
    float* ds = scratch[worker].data();
    std::fill(dki, dki + static_cast<int64_t>(tk) * hs, 0.0f);
    std::fill(dvi, dvi + static_cast<int64_t>(tk) * hs, 0.0f);
    for (int r0 = 0; r0 < tq; r0 += kQueryBlock) {
      const int rows = std::min(kQueryBlock, tq - r0);
      const int keys = VisibleKeys(r0 + rows, tq, tk);
      float* dqb = dqi + static_cast<int64_t>(r0) * hs;
      if (keys == 0) {
        std::fill(dqb, dqb + static_cast<int64_t>(rows) * hs, 0.0f);
        continue;
      }
      const float* pb = p + static_cast<int64_t>(r0) * tk;
      const float* dOb = dO + static_cast<int64_t>(r0) * hs;
      const float* qb = qi + static_cast<int64_t>(r0) * hs;
      Gemm(true, false, keys, hs, rows, 1.0f, pb, tk, dOb, hs, 1.0f, dvi, hs);  // dv += P^T dO
      Gemm(false, true, rows, keys, hs, 1.0f, dOb, hs, vi, hs, 0.0f, ds, keys);  // dP = dO v^T
      for (int r = 0; r < rows; ++r) {
        const float* pr = pb + static_cast<int64_t>(r) * tk;
        float* dr = ds + static_cast<int64_t>(r) * keys;
        float dot = 0.0f;
        for (int j = 0; j < keys; ++j) dot += pr[j] * dr[j];
        for (int j = 0; j < keys; ++j) dr[j] = pr[j] * (dr[j] - dot);
      }
      Gemm(false, false, rows, hs, keys, scale, ds, keys, ki, hs, 0.0f, dqb, hs);  // dq = s dS k
      Gemm(true, false, keys, hs, rows, scale, ds, keys, qb, hs, 1.0f, dki, hs);  // dk += s dS^T q
    }
  });
  return env.Undefined();
}

// One row's layer norm: y = (x - mean) rstd gamma + beta; its mean and rstd kept for a backward.
// (Defined after the vector lanes.)
void LayerNormRow(const float* x, const float* gamma, const float* beta, float* y, int64_t cols,
                  float eps, float* meanOut, float* rstdOut);

// layerNormForward(x, gamma, beta, out, mean, rstd, rows, cols, eps)
Napi::Value LayerNormForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 9, "layerNormForward")) return env.Undefined();
  const int64_t rows = Int(info, 6), cols = Int(info, 7);
  const float eps = info[8].As<Napi::Number>().FloatValue();
  const float* x = FloatData(info[0], rows * cols, "x", env);
  const float* gamma = x ? FloatData(info[1], cols, "gamma", env) : nullptr;
  const float* beta = gamma ? FloatData(info[2], cols, "beta", env) : nullptr;
  float* out = beta ? FloatData(info[3], rows * cols, "out", env) : nullptr;
  float* mean = out ? FloatData(info[4], rows, "mean", env) : nullptr;
  float* rstd = mean ? FloatData(info[5], rows, "rstd", env) : nullptr;
  if (rstd == nullptr || cols == 0) return env.Undefined();
  ParallelRanges(rows, rows * cols, [&](int64_t from, int64_t to, int) {
    for (int64_t r = from; r < to; ++r)
      LayerNormRow(x + r * cols, gamma, beta, out + r * cols, cols, eps, mean + r, rstd + r);
  });
  return env.Undefined();
}

// layerNormBackward(x, gamma, mean, rstd, dy, dx, dgamma, dbeta, rows, cols)
// xhat = (x - mean) rstd; dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma.
Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 10, "layerNormBackward")) return env.Undefined();
  const int64_t rows = Int(info, 8), cols = Int(info, 9);
  const float* x = FloatData(info[0], rows * cols, "x", env);
  const float* gamma = x ? FloatData(info[1], cols, "gamma", env) : nullptr;
  const float* mean = gamma ? FloatData(info[2], rows, "mean", env) : nullptr;
  const float* rstd = mean ? FloatData(info[3], rows, "rstd", env) : nullptr;
  const float* dy = rstd ? FloatData(info[4], rows * cols, "dy", env) : nullptr;
  float* dx = dy ? FloatData(info[5], rows * cols, "dx", env) : nullptr;
  float* dgamma = dx ? FloatData(info[6], cols, "dgamma", env) : nullptr;
  float* dbeta = dgamma ? FloatData(info[7], cols, "dbeta", env) : nullptr;
  if (dbeta == nullptr) return env.Undefined();
  std::fill(dgamma, dgamma + cols, 0.0f);
  std::fill(dbeta, dbeta + cols, 0.0f);
  if (cols == 0) return env.Undefined();
  // Each worker sums its rows' dgamma, dbeta apart; worker 0 writes straight to the outputs.
  std::vector<std::vector<float>> partial(std::max(0, workerThreads - 1),
                                          std::vector<float>(2 * cols, 0.0f));
  ParallelRanges(rows, rows * cols, [&](int64_t from, int64_t to, int worker) {
    float* dgammaW = worker == 0 ? dgamma : partial[worker - 1].data();
    float* dbetaW = worker == 0 ? dbeta : partial[worker - 1].data() + cols;
    for (int64_t r = from; r < to; ++r) {
      const float* xr = x + r * cols;
      const float* dyr = dy + r * cols;
      float* dxr = dx + r * cols;
      const float mu = mean[r], rs = rstd[r];
      float sumG = 0.0f, sumGX = 0.0f;
      for (int64_t j = 0; j < cols; ++j) {
        const float xhat = (xr[j] - mu) * rs;
        const float g = dyr[j] * gamma[j];
        sumG += g;
        sumGX += g * xhat;
        dgammaW[j] += dyr[j] * xhat;
        dbetaW[j] += dyr[j];
      }
      const float meanG = sumG / cols, meanGX = sumGX / cols;
      for (int64_t j = 0; j < cols; ++j) {
        const float xhat = (xr[j] - mu) * rs;
        dxr[j] = rs * (dyr[j] * gamma[j] - meanG - xhat * meanGX);
      }
    }
  });
  for (const auto& p : partial) {
    for (int64_t j = 0; j < cols; ++j) {
      dgamma[j] += p[j];
      dbeta[j] += p[cols + j];
    }
  }
  return env.Undefined();
}

// Moves attention heads between the sequence layout [B, T, parts, nh, hs] (what a fused
// projection produces) and the head layout [B, nh, T, hs] (what attention reads), for one part.
// toHeads(src, dst, b, t, parts, part, nh, hs): src sequence layout -> dst head layout.
// fromHeads(src, dst, ...): the reverse; dst's other parts are left as they are.
template <bool kToHeads>
Napi::Value MoveHeads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 8, kToHeads ? "toHeads" : "fromHeads")) return env.Undefined();
  const int64_t b = Int(info, 2), t = Int(info, 3), parts = Int(info, 4), part = Int(info, 5),
                nh = Int(info, 6), hs = Int(info, 7);
  if (part < 0 || part >= parts) {
    Napi::RangeError::New(env, "part must be within 0..parts-1").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t seqSize = b * t * parts * nh * hs, headSize = b * nh * t * hs;
  float* src = FloatData(info[0], kToHeads ? seqSize : headSize, "src", env);
  float* dst = src ? FloatData(info[1], kToHeads ? headSize : seqSize, "dst", env) : nullptr;
  if (dst == nullptr) return env.Undefined();
  ParallelRanges(b * t, headSize, [&](int64_t from, int64_t to, int) {
    for (int64_t pos = from; pos < to; ++pos) {  // pos = bi * t + ti
      const int64_t bi = pos / t, ti = pos % t;
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t seq = ((pos * parts + part) * nh + h) * hs;
        const int64_t head = ((bi * nh + h) * t + ti) * hs;
        if (kToHeads) {
          std::copy(src + seq, src + seq + hs, dst + head);
        } else {
          std::copy(src + head, src + head + hs, dst + seq);
        }
      }
    }
  });
  return env.Undefined();
}

// Targets outside 0..classes-1 (e.g. -1 for "not trained on") count zero loss and get no
// gradient, as a one-hot row of zeros would.
bool ValidTarget(int32_t t, int64_t classes) { return t >= 0 && t < classes; }

const int32_t* IntData(const Napi::Value& v, size_t need, const char* name, Napi::Env env) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    Napi::TypeError::New(env, std::string(name) + " must be an Int32Array")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  auto arr = v.As<Napi::Int32Array>();
  if (arr.ElementLength() < need) {
    Napi::RangeError::New(env, std::string(name) + " is smaller than its shape says")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  return arr.Data();
}

uint16_t* HalfData(const Napi::Value& v, size_t need, const char* name, Napi::Env env) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array) {
    Napi::TypeError::New(env, std::string(name) + " must be a Uint16Array (float16 bits)")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  auto arr = v.As<Napi::Uint16Array>();
  if (arr.ElementLength() < need) {
    Napi::RangeError::New(env, std::string(name) + " is smaller than its shape says")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  return arr.Data();
}

// Vector lanes for the decode kernels (paged attention over float16, products on packed
// weights): 16 floats per register with AVX-512, 8 with F16C + AVX2 + FMA (x86 since 2013).
// Elsewhere those kernels run plain loops, and float16 goes through the compiler's _Float16
// conversions one value at a time (native on ARM; a library call per value on an old x86).
#if defined(__AVX512F__)
#define CHATRL_LANES 1
struct Lanes {
  using V = __m512;
  static constexpr int kWidth = 16;
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static V LoadHalf(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void StoreHalf(uint16_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V Zero() { return _mm512_setzero_ps(); }
  static V Set(float x) { return _mm512_set1_ps(x); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Div(V a, V b) { return _mm512_div_ps(a, b); }
  static V Max(V a, V b) { return _mm512_max_ps(a, b); }
  static V Abs(V a) { return _mm512_abs_ps(a); }
  // a where x >= 0, else b.
  static V IfNonNegative(V x, V a, V b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
  }
  static V Round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT); }
  static V Pow2(V y, V n) { return _mm512_scalef_ps(y, n); }  // y * 2^n
  static float Sum(V v) { return _mm512_reduce_add_ps(v); }
  static float MaxOf(V v) { return _mm512_reduce_max_ps(v); }

  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
};
#elif defined(__F16C__) && defined(__AVX2__) && defined(__FMA__)
#define CHATRL_LANES 1
struct Lanes {
  using V = __m256;
  static constexpr int kWidth = 8;
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static V LoadHalf(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void StoreHalf(uint16_t* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V Zero() { return _mm256_setzero_ps(); }
  static V Set(float x) { return _mm256_set1_ps(x); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Div(V a, V b) { return _mm256_div_ps(a, b); }
  static V Max(V a, V b) { return _mm256_max_ps(a, b); }
  static V Abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  // a where x >= 0, else b.
  static V IfNonNegative(V x, V a, V b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
  }
  static V Round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V Pow2(V y, V n) {  // y * 2^n, n a whole number in [-126, 127]
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
  }
  static float Sum(V v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
  }
  static float MaxOf(V v) {
    const __m128 half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pairs = _mm_max_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_max_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
  }

  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
};
#endif

#if defined(CHATRL_LANES)
// e^x for x <= 0 (softmax after its max is taken off), kWidth values at once: x = n ln2 + r,
// e^r by Cephes' expf polynomial, times 2^n. Within 1 ulp of the correctly rounded e^x for
// every float in [-87, 0] (checked exhaustively against double exp); below -87 it gives e^-87
// (1.6e-38), which no softmax sum notices. The scalar std::exp per score was most of a decode
// step's attention.
inline Lanes::V ExpNonPositive(Lanes::V x) {
  using L = Lanes;
  x = L::Max(x, L::Set(-87.0f));
  const L::V n = L::Round(L::Mul(x, L::Set(1.44269504088896341f)));
  L::V r = L::Fma(n, L::Set(-0.693359375f), x);
  r = L::Fma(n, L::Set(2.12194440e-4f), r);
  L::V p = L::Set(1.9875691500e-4f);
  p = L::Fma(p, r, L::Set(1.3981999507e-3f));
  p = L::Fma(p, r, L::Set(8.3334519073e-3f));
  p = L::Fma(p, r, L::Set(4.1665795894e-2f));
  p = L::Fma(p, r, L::Set(1.6666665459e-1f));
  p = L::Fma(p, r, L::Set(5.0000001201e-1f));
  p = L::Fma(p, L::Mul(r, r), L::Add(r, L::Set(1.0f)));
  return L::Pow2(p, n);
}
#endif

// GCC 12 warns of its own header's `__Y = __Y` in _mm512_reduce_add_ps once inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// Sums of x[j] and of (x[j] - center)^2 over a row, kWidth lanes at a time where there are
// lanes: one running sum over the row was a chain of dependent adds, most of the time a decode
// step's norms took.
float RowSum(const float* x, int64_t cols) {
  int64_t j = 0;
  float s = 0.0f;
#if defined(CHATRL_LANES)
  using L = Lanes;
  L::V acc = L::Zero();
  for (; j + L::kWidth <= cols; j += L::kWidth) acc = L::Add(acc, L::Load(x + j));
  s = L::Sum(acc);
#endif
  for (; j < cols; ++j) s += x[j];
  return s;
}

float RowSquares(const float* x, int64_t cols, float center) {
  int64_t j = 0;
  float s = 0.0f;
#if defined(CHATRL_LANES)
  using L = Lanes;
  const L::V m = L::Set(center);
  L::V acc = L::Zero();
  for (; j + L::kWidth <= cols; j += L::kWidth) {
    const L::V d = L::Sub(L::Load(x + j), m);
    acc = L::Fma(d, d, acc);
  }
  s = L::Sum(acc);
#endif
  for (; j < cols; ++j) s += (x[j] - center) * (x[j] - center);
  return s;
}
#pragma GCC diagnostic pop

void LayerNormRow(const float* x, const float* gamma, const float* beta, float* y, int64_t cols,
                  float eps, float* meanOut, float* rstdOut) {
  const float mu = RowSum(x, cols) / cols;
  const float rs = 1.0f / std::sqrt(RowSquares(x, cols, mu) / cols + eps);
  for (int64_t j = 0; j < cols; ++j) y[j] = (x[j] - mu) * rs * gamma[j] + beta[j];
  *meanOut = mu;
  *rstdOut = rs;
}

// float32 -> float16 bits (round to nearest even), n values.
void FloatToHalf(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(CHATRL_LANES)
  for (; i + Lanes::kWidth <= n; i += Lanes::kWidth)
    Lanes::StoreHalf(dst + i, Lanes::Load(src + i));
#endif
  for (; i < n; ++i) {
    const _Float16 h = static_cast<_Float16>(src[i]);
    std::memcpy(dst + i, &h, 2);
  }
}

inline float HalfToFloat(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

// Products of decode steps (a few rows against a whole weight matrix) on weights packed once
// into panels of kPanel columns, [panels][in][kPanel], zero past outDim. OpenBLAS packs its
// operand again on every call and walks the weights in column strips across pages; a step that
// streams each panel front to back ran the probe model's products 1.9x faster for 1 to 16 rows
// on one thread (a C++ loop over its 16 products with other traffic between steps). Each output
// sums its products in the order of `in`, whatever the number of rows, so a row's numbers do
// not depend on what shares its step.
constexpr int64_t kPanel = 64;

// packPanels(w, packed, in, outDim): packed[p][i][j] = w[i][p * kPanel + j], 0 past outDim.
Napi::Value PackPanels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 4, "packPanels")) return env.Undefined();
  const int64_t in = Int(info, 2), outDim = Int(info, 3);
  const int64_t panels = (outDim + kPanel - 1) / kPanel;
  const float* w = FloatData(info[0], in * outDim, "w", env);
  float* packed = w ? FloatData(info[1], panels * in * kPanel, "packed", env) : nullptr;
  if (packed == nullptr) return env.Undefined();
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t from = p * kPanel, width = std::min(kPanel, outDim - from);
    for (int64_t i = 0; i < in; ++i) {
      float* dst = packed + (p * in + i) * kPanel;
      std::copy(w + i * outDim + from, w + i * outDim + from + width, dst);
      std::fill(dst + width, dst + kPanel, 0.0f);
    }
  }
  return env.Undefined();
}

// R rows of x [R, in] times one packed panel [in, kPanel], plus the bias, into out (width
// columns of it, ldo apart).
template <int R>
void PanelRows(const float* x, int64_t in, const float* panel, const float* bias, float* out,
               int64_t ldo, int64_t width) {
#if defined(CHATRL_LANES)
  using L = Lanes;
  constexpr int V = kPanel / L::kWidth;
  L::V acc[R][V];
  for (int v = 0; v < V; ++v) {
    L::V b = L::Zero();
    if (bias != nullptr && width == kPanel) b = L::Load(bias + v * L::kWidth);
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int64_t i = 0; i < in; ++i) {
    const float* wi = panel + i * kPanel;
    L::V wv[V];
    for (int v = 0; v < V; ++v) wv[v] = L::Load(wi + v * L::kWidth);
    for (int r = 0; r < R; ++r) {
      const L::V xs = L::Set(x[r * in + i]);
      for (int v = 0; v < V; ++v) acc[r][v] = L::Fma(xs, wv[v], acc[r][v]);
    }
  }
  float tail[kPanel];
  for (int r = 0; r < R; ++r) {
    if (width == kPanel) {
      for (int v = 0; v < V; ++v) L::Store(out + r * ldo + v * L::kWidth, acc[r][v]);
      continue;
    }
    for (int v = 0; v < V; ++v) L::Store(tail + v * L::kWidth, acc[r][v]);
    for (int64_t j = 0; j < width; ++j) out[r * ldo + j] = tail[j] + (bias ? bias[j] : 0.0f);
  }
#else
  for (int r = 0; r < R; ++r) {
    float acc[kPanel] = {};
    for (int64_t i = 0; i < in; ++i) {
      const float xs = x[r * in + i];
      const float* wi = panel + i * kPanel;
      for (int64_t j = 0; j < kPanel; ++j) acc[j] += xs * wi[j];
    }
    for (int64_t j = 0; j < width; ++j) out[r * ldo + j] = acc[j] + (bias ? bias[j] : 0.0f);
  }
#endif
}

// out = x @ w + bias for x [rows, in], w packed by packPanels; panels split over the threads.
void PanelsProduct(const float* x, const float* packed, const float* bias, float* out,
                   int64_t rows, int64_t in, int64_t outDim) {
  if (rows == 0 || outDim == 0) return;
  const int64_t panels = (outDim + kPanel - 1) / kPanel;
#if defined(CHATRL_LANES)
  constexpr int64_t kRows = Lanes::kWidth == 16 ? 6 : 1;  // what the registers hold
#else
  constexpr int64_t kRows = 1;
#endif
  ParallelFor(panels, rows * in * outDim, [&](int64_t p, int) {
    const int64_t from = p * kPanel, width = std::min(kPanel, outDim - from);
    const float* panel = packed + p * in * kPanel;
    const float* b = bias ? bias + from : nullptr;
    int64_t r = 0;
    for (; r + kRows <= rows; r += kRows)
      PanelRows<kRows>(x + r * in, in, panel, b, out + r * outDim + from, outDim, width);
    for (; r + 3 <= rows; r += 3)
      PanelRows<3>(x + r * in, in, panel, b, out + r * outDim + from, outDim, width);
    for (; r < rows; ++r)
      PanelRows<1>(x + r * in, in, panel, b, out + r * outDim + from, outDim, width);
  });
}

// bfloat16 weights for the decode steps (the serving dtype "bfloat16", as vLLM serves a float32
// checkpoint in half precision): half the bytes a step streams, and on CPUs with AMX (Intel
// Xeon since Sapphire Rapids) the products run on its tile unit, ~16x the multiply-adds of
// AVX-512 per cycle, so a step of 16 rows costs little more than a step of one. The weights are
// packed in AMX's tile order, [out / 16][in / 32][16 pairs of in][16 out][2], zero past in and
// outDim; the rows are rounded to bfloat16 too, and every product is summed in float32. Each
// output depends on its own row alone, in the same order whatever the number of rows, so a
// row's numbers do not depend on what shares its step, with or without AMX.
constexpr int64_t kTileK = 32, kTileN = 16, kTileElems = kTileK * kTileN;

int64_t Bf16Elements(int64_t in, int64_t outDim) {
  return (outDim + kTileN - 1) / kTileN * ((in + kTileK - 1) / kTileK) * kTileElems;
}

// float32 -> bfloat16 bits, round to nearest even (NaN stays NaN).
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  // Branch-free, so that the loops over rows vectorize.
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40 : rounded);
}

inline float Bf16ToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// packBf16(w, packed, in, outDim): w [in, outDim] float32 into packed (Bf16Elements values).
Napi::Value PackBf16(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 4, "packBf16")) return env.Undefined();
  const int64_t in = Int(info, 2), outDim = Int(info, 3);
  const float* w = FloatData(info[0], in * outDim, "w", env);
  uint16_t* packed = w ? HalfData(info[1], Bf16Elements(in, outDim), "packed", env) : nullptr;
  if (packed == nullptr) return env.Undefined();
  const int64_t chunks = (in + kTileK - 1) / kTileK, blocks = (outDim + kTileN - 1) / kTileN;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t kc = 0; kc < chunks; ++kc) {
      uint16_t* tile = packed + (b * chunks + kc) * kTileElems;
      for (int64_t k = 0; k < kTileK; ++k)
        for (int64_t j = 0; j < kTileN; ++j) {
          const int64_t i = kc * kTileK + k, col = b * kTileN + j;
          tile[(k / 2) * kTileN * 2 + j * 2 + k % 2] =
              i < in && col < outDim ? FloatToBf16(w[i * outDim + col]) : 0;
        }
    }
  return env.Undefined();
}

// The rows rounded to bfloat16, [groups of 16 rows][chunks * 32], zero-padded (AMX's A tiles).
void RowsToBf16(const float* x, int64_t rows, int64_t in, std::vector<uint16_t>& a) {
  const int64_t ld = (in + kTileK - 1) / kTileK * kTileK;
  a.resize((rows + 15) / 16 * 16 * ld);
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* dst = a.data() + r * ld;
    const float* src = x + r * in;
    for (int64_t i = 0; i < in; ++i) dst[i] = FloatToBf16(src[i]);
    std::fill(dst + in, dst + ld, 0);
  }
  std::fill(a.begin() + rows * ld, a.end(), 0);
}

// out[r][col] = sum[col] + bias[col] for the columns [from, from + n) that exist.
inline void StoreColumns(const float* sums, const float* bias, float* out, int64_t from, int64_t n,
                         int64_t outDim) {
#if defined(CHATRL_LANES)
  if (from + n <= outDim && n % Lanes::kWidth == 0) {
    for (int64_t j = 0; j < n; j += Lanes::kWidth) {
      const Lanes::V b = bias ? Lanes::Load(bias + from + j) : Lanes::Zero();
      Lanes::Store(out + from + j, Lanes::Add(Lanes::Load(sums + j), b));
    }
    return;
  }
#endif
  for (int64_t j = 0; j < n && from + j < outDim; ++j)
    out[from + j] = sums[j] + (bias ? bias[from + j] : 0.0f);
}

// Without AMX: the same tiles through float32 multiply-adds, a block of 16 columns at a time.
void Bf16ProductPlain(const uint16_t* a, const uint16_t* packed, const float* bias, float* out,
                      int64_t rows, int64_t in, int64_t outDim, int64_t block) {
  const int64_t chunks = (in + kTileK - 1) / kTileK, ld = chunks * kTileK;
  std::vector<float> acc(rows * kTileN, 0.0f);
  float w[kTileK][kTileN];
  for (int64_t kc = 0; kc < chunks; ++kc) {
    const uint16_t* tile = packed + (block * chunks + kc) * kTileElems;
    for (int64_t k = 0; k < kTileK; ++k)
      for (int64_t j = 0; j < kTileN; ++j) w[k][j] = Bf16ToFloat(tile[(k / 2) * kTileN * 2 + j * 2 + k % 2]);
    for (int64_t r = 0; r < rows; ++r) {
      float* s = acc.data() + r * kTileN;
      for (int64_t k = 0; k < kTileK; ++k) {
        const float xk = Bf16ToFloat(a[r * ld + kc * kTileK + k]);
        for (int64_t j = 0; j < kTileN; ++j) s[j] += xk * w[k][j];
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    StoreColumns(acc.data() + r * kTileN, bias, out + r * outDim, block * kTileN, kTileN, outDim);
}

#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 11
#define CHATRL_AMX 1
// Linux hands a process the AMX tile registers only once it asks (arch_prctl).
bool AmxAvailable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return tile && bf16 && syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

struct TileConfig {
  uint8_t palette = 1, startRow = 0, reserved[14] = {};
  uint16_t bytesPerRow[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3 sum four blocks of 16 columns, tile 4 holds 16 rows x 32 values of x, 5-7 the
// weights. The configuration is the thread's own and stays loaded.
__attribute__((target("amx-tile,amx-bf16"))) void ConfigureTiles() {
  thread_local bool configured = false;
  if (configured) return;
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.bytesPerRow[t] = 64;
  }
  _tile_loadconfig(&config);
  configured = true;
}

// Writes the sums of tile `sums` ([16 rows][16 columns], rows of group g) with the bias.
inline void StoreTile(const float* sums, const float* bias, float* out, int64_t rows,
                      int64_t outDim, int64_t g, int64_t block) {
  for (int64_t r = g * 16; r < std::min(rows, g * 16 + 16); ++r)
    StoreColumns(sums + (r - g * 16) * 16, bias, out + r * outDim, block * kTileN, kTileN, outDim);
}

// The four sum tiles (0-3): cleared before a pass over the input, copied out after.
__attribute__((target("amx-tile,amx-bf16"))) inline void ZeroSums() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

__attribute__((target("amx-tile,amx-bf16"))) inline void StoreSums(float (&sums)[4][16 * 16]) {
  _tile_stored(0, sums[0], 64);
  _tile_stored(1, sums[1], 64);
  _tile_stored(2, sums[2], 64);
  _tile_stored(3, sums[3], 64);
}

// Two row groups (g, g + 1) by blocks b, b + 1 (n of them, 1 or 2): tiles 0-3 sum, 4-5 hold the
// rows, 6-7 the weights. Each weight tile loaded serves 32 rows, where the one-group loop below
// loads it for every 16: a prefill of 64 tokens streams the weights from L2 half as often.
__attribute__((target("amx-tile,amx-bf16"))) void AmxTwoGroups(
    const uint16_t* a, const uint16_t* packed, const float* bias, float* out, int64_t rows,
    int64_t in, int64_t outDim, int64_t g, int64_t b, int64_t n) {
  const int64_t chunks = (in + kTileK - 1) / kTileK, ld = chunks * kTileK;
  const uint16_t* w = packed + b * chunks * kTileElems;
  const int64_t stride = chunks * kTileElems;
  const uint16_t* a0 = a + g * 16 * ld;
  const uint16_t* a1 = a0 + 16 * ld;
  ZeroSums();
  for (int64_t kc = 0; kc < chunks; ++kc) {
    const uint16_t* wk = w + kc * kTileElems;
    _tile_loadd(4, a0 + kc * kTileK, ld * 2);
    _tile_loadd(5, a1 + kc * kTileK, ld * 2);
    _tile_loadd(6, wk, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if (n > 1) {
      _tile_loadd(7, wk + stride, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float sums[4][16 * 16];
  StoreSums(sums);
  StoreTile(sums[0], bias, out, rows, outDim, g, b);
  StoreTile(sums[2], bias, out, rows, outDim, g + 1, b);
  if (n > 1) {
    StoreTile(sums[1], bias, out, rows, outDim, g, b + 1);
    StoreTile(sums[3], bias, out, rows, outDim, g + 1, b + 1);
  }
}

// One row group g by blocks [first, first + n) (n <= 4): tiles 0-3 sum, 4 holds the rows, 5-7
// the weights.
__attribute__((target("amx-tile,amx-bf16"))) void AmxOneGroup(
    const uint16_t* a, const uint16_t* packed, const float* bias, float* out, int64_t rows,
    int64_t in, int64_t outDim, int64_t g, int64_t first, int64_t n) {
  const int64_t chunks = (in + kTileK - 1) / kTileK, ld = chunks * kTileK;
  const uint16_t* w = packed + first * chunks * kTileElems;
  const int64_t stride = chunks * kTileElems;  // from one block's tile to the next block's
  ZeroSums();
  const uint16_t* ag = a + g * 16 * ld;
  for (int64_t kc = 0; kc < chunks; ++kc) {
    const uint16_t* wk = w + kc * kTileElems;
    _tile_loadd(4, ag + kc * kTileK, ld * 2);
    _tile_loadd(5, wk, 64);
    _tile_dpbf16ps(0, 4, 5);
    if (n > 1) {
      _tile_loadd(6, wk + stride, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if (n > 2) {
      _tile_loadd(7, wk + 2 * stride, 64);
      _tile_dpbf16ps(2, 4, 7);
    }
    if (n > 3) {
      _tile_loadd(5, wk + 3 * stride, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
  alignas(64) float sums[4][16 * 16];
  StoreSums(sums);
  for (int64_t t = 0; t < n; ++t) StoreTile(sums[t], bias, out, rows, outDim, g, first + t);
}

// Blocks [first, first + n) (n <= 4) of 16 columns for every row: row groups two at a time, the
// last odd one alone. Every output sums its row's products in the same order either way.
__attribute__((target("amx-tile,amx-bf16"))) void Bf16ProductAmx(
    const uint16_t* a, const uint16_t* packed, const float* bias, float* out, int64_t rows,
    int64_t in, int64_t outDim, int64_t first, int64_t n) {
  ConfigureTiles();
  const int64_t groups = (rows + 15) / 16;
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2)
    for (int64_t b = first; b < first + n; b += 2)
      AmxTwoGroups(a, packed, bias, out, rows, in, outDim, g, b, std::min<int64_t>(2, first + n - b));
  if (g < groups) AmxOneGroup(a, packed, bias, out, rows, in, outDim, g, first, n);
}
#endif

// Built only where the build targets AVX-512 (-march=native on such a CPU): a portable build
// (x86-64-v3, the images) carries no AVX-512 instruction at all, and serves float32 on such CPUs.
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 11 && defined(__AVX512F__)
#define CHATRL_AVX512_BF16 1
// Without AMX, AVX-512 BF16 (AMD since Zen 4, Intel since Cooper Lake) multiplies pairs of
// bfloat16 into float32 sums, 32 multiply-adds per instruction where a float32 FMA does 16. A
// row of an AMX weight tile, [16 columns][2 values of in], is exactly one such operand: the same
// packed weights serve both. Rows r0..r0+R by blocks [first, first + N): each of the R x N
// registers sums one row's 16 columns over `in` in order, the same order for any R.
template <int R, int N>
__attribute__((target("avx512f,avx512bf16"))) void Bf16VectorRows(
    const uint16_t* a, const uint16_t* packed, const float* bias, float* out, int64_t r0,
    int64_t in, int64_t outDim, int64_t first) {
  const int64_t chunks = (in + kTileK - 1) / kTileK, ld = chunks * kTileK;
  const int64_t stride = chunks * kTileElems;  // from one block's tiles to the next block's
  const uint16_t* w = packed + first * stride;
  __m512 acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < N; ++n) acc[r][n] = _mm512_setzero_ps();
  for (int64_t pair = 0; pair < ld / 2; ++pair) {
    // Tile kc = pair / 16, its row pair % 16: 32 bfloat16, 16 columns x 2 values of in.
    const uint16_t* wp = w + (pair / 16) * kTileElems + (pair % 16) * 2 * kTileN;
    __m512bh wv[N];
    for (int n = 0; n < N; ++n)
      wv[n] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(wp + n * stride));
    for (int r = 0; r < R; ++r) {
      int32_t xs;
      std::memcpy(&xs, a + (r0 + r) * ld + pair * 2, 4);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(xs);
      for (int n = 0; n < N; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], xv, wv[n]);
    }
  }
  alignas(64) float sums[kTileN];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < N; ++n) {
      _mm512_store_ps(sums, acc[r][n]);
      StoreColumns(sums, bias, out + (r0 + r) * outDim, (first + n) * kTileN, kTileN, outDim);
    }
}

// Blocks [first, first + n) (n <= 4) for every row, six rows at a time.
template <int N>
void Bf16VectorBlocks(const uint16_t* a, const uint16_t* packed, const float* bias, float* out,
                      int64_t rows, int64_t in, int64_t outDim, int64_t first) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) Bf16VectorRows<6, N>(a, packed, bias, out, r, in, outDim, first);
  for (; r + 3 <= rows; r += 3) Bf16VectorRows<3, N>(a, packed, bias, out, r, in, outDim, first);
  for (; r < rows; ++r) Bf16VectorRows<1, N>(a, packed, bias, out, r, in, outDim, first);
}

void Bf16ProductVector(const uint16_t* a, const uint16_t* packed, const float* bias, float* out,
                       int64_t rows, int64_t in, int64_t outDim, int64_t first, int64_t n) {
  switch (n) {
    case 4: return Bf16VectorBlocks<4>(a, packed, bias, out, rows, in, outDim, first);
    case 3: return Bf16VectorBlocks<3>(a, packed, bias, out, rows, in, outDim, first);
    case 2: return Bf16VectorBlocks<2>(a, packed, bias, out, rows, in, outDim, first);
    default: return Bf16VectorBlocks<1>(a, packed, bias, out, rows, in, outDim, first);
  }
}

bool VectorBf16Available() { return __builtin_cpu_supports("avx512bf16"); }
#endif

// Which loop multiplies bfloat16 weights: the best the CPU has, or a slower one a test chose
// (setBf16Kernel) to compare them.
enum class Bf16Kernel { kPlain = 0, kVector = 1, kAmx = 2 };
const char* const kBf16KernelNames[] = {"plain", "avx512bf16", "amx"};
Bf16Kernel bf16Best = Bf16Kernel::kPlain;  // set in Init
Bf16Kernel bf16Chosen = Bf16Kernel::kAmx;  // the ceiling a test set

Bf16Kernel Bf16KernelInUse() { return std::min(bf16Best, bf16Chosen); }

// out = x @ w + bias for x [rows, in], w packed by packBf16; groups of 4 blocks over the threads.
void Bf16Product(const float* x, const uint16_t* packed, const float* bias, float* out,
                 int64_t rows, int64_t in, int64_t outDim) {
  if (rows == 0 || outDim == 0) return;
  thread_local std::vector<uint16_t> rowsBf16;
  RowsToBf16(x, rows, in, rowsBf16);
  const uint16_t* a = rowsBf16.data();  // the caller's buffer, read by every thread
  const int64_t blocks = (outDim + kTileN - 1) / kTileN;
  const Bf16Kernel kernel = Bf16KernelInUse();
#if defined(CHATRL_AMX)
  if (kernel == Bf16Kernel::kAmx) {
    // AMX does ~16x the multiply-adds of a vector unit: a second thread pays off that much later.
    ParallelFor((blocks + 3) / 4, (rows + 15) / 16 * 16 * in * outDim / 16, [&](int64_t p, int) {
      Bf16ProductAmx(a, packed, bias, out, rows, in, outDim, p * 4,
                     std::min<int64_t>(4, blocks - p * 4));
    });
    return;
  }
#endif
#if defined(CHATRL_AVX512_BF16)
  if (kernel == Bf16Kernel::kVector) {
    ParallelFor((blocks + 3) / 4, rows * in * outDim, [&](int64_t p, int) {
      Bf16ProductVector(a, packed, bias, out, rows, in, outDim, p * 4,
                        std::min<int64_t>(4, blocks - p * 4));
    });
    return;
  }
#endif
  ParallelFor(blocks, rows * in * outDim, [&](int64_t b, int) {
    Bf16ProductPlain(a, packed, bias, out, rows, in, outDim, b);
  });
}

// bf16Kernel(): the loop bfloat16 products run on, "amx", "avx512bf16" or "plain".
Napi::Value Bf16KernelName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kBf16KernelNames[static_cast<int>(Bf16KernelInUse())]);
}

// setBf16Kernel(name): bfloat16 products use that loop, or the best below it the CPU has (tests
// compare them). Returns the one in use.
Napi::Value SetBf16Kernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  const auto* found = std::find(std::begin(kBf16KernelNames), std::end(kBf16KernelNames), name);
  if (found == std::end(kBf16KernelNames)) {
    Napi::TypeError::New(env, "setBf16Kernel: amx, avx512bf16 or plain, not '" + name + "'")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bf16Chosen = static_cast<Bf16Kernel>(found - std::begin(kBf16KernelNames));
  return Bf16KernelName(info);
}

// Weights packed for decode steps, in either layout: float32 panels (packPanels) or bfloat16
// tiles (packBf16), told apart by the array's type.
struct PackedWeight {
  const float* panels = nullptr;
  const uint16_t* bf16 = nullptr;
  bool ok() const { return panels != nullptr || bf16 != nullptr; }
};

PackedWeight PackedData(const Napi::Value& v, int64_t in, int64_t outDim, const char* name,
                        Napi::Env env) {
  PackedWeight w;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array)
    w.bf16 = HalfData(v, Bf16Elements(in, outDim), name, env);
  else
    w.panels = FloatData(v, (outDim + kPanel - 1) / kPanel * kPanel * in, name, env);
  return w;
}

void PackedProduct(const float* x, const PackedWeight& w, const float* bias, float* out,
                   int64_t rows, int64_t in, int64_t outDim) {
  if (w.bf16 != nullptr) Bf16Product(x, w.bf16, bias, out, rows, in, outDim);
  else PanelsProduct(x, w.panels, bias, out, rows, in, outDim);
}

// linearPanels(x, packed, bias | null, out, rows, in, outDim): out = x @ w + bias, w packed by
// packPanels (a Float32Array) or packBf16 (a Uint16Array).
Napi::Value LinearPanels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 7, "linearPanels")) return env.Undefined();
  const int64_t rows = Int(info, 4), in = Int(info, 5), outDim = Int(info, 6);
  const float* x = FloatData(info[0], rows * in, "x", env);
  const PackedWeight packed = x ? PackedData(info[1], in, outDim, "packed", env) : PackedWeight();
  if (!packed.ok()) return env.Undefined();
  const bool hasBias = !info[2].IsNull() && !info[2].IsUndefined();
  const float* bias = hasBias ? FloatData(info[2], outDim, "bias", env) : nullptr;
  if (hasBias && bias == nullptr) return env.Undefined();
  float* out = FloatData(info[3], rows * outDim, "out", env);
  if (out == nullptr) return env.Undefined();
  PackedProduct(x, packed, bias, out, rows, in, outDim);
  return env.Undefined();
}

// Paged KV cache (vLLM's PagedAttention at this project's scale): every layer keeps its keys
// in one pool of [blocks * blockSize, C] positions and its values in another, as float16 (half
// the bytes a decode step reads; it is bound by reading them), and each row of a decode batch
// owns a list of blocks (its row of `table`, maxBlocks wide). A row's position p lives at pool
// position table[row][p / blockSize] * blockSize + p % blockSize.
int64_t PoolPosition(const int32_t* table, int64_t row, int64_t maxBlocks, int64_t blockSize,
                     int64_t p) {
  return static_cast<int64_t>(table[row * maxBlocks + p / blockSize]) * blockSize + p % blockSize;
}

// A row's blocks lie anywhere in the pool, so the hardware prefetcher loses the stream at every
// block boundary: the attention loops fetch the position kAhead ahead themselves (values
// [from, from + count) of it). Scattered blocks (as rows take them in turn) cost 1.75x
// contiguous ones without it.
constexpr int64_t kAhead = 4;
inline void PrefetchPosition(const uint16_t* pool, const int32_t* blocks, int64_t p,
                             int64_t blockSize, int64_t c, int64_t from = 0, int64_t count = -1) {
  const char* at = reinterpret_cast<const char*>(
      pool + (static_cast<int64_t>(blocks[p / blockSize]) * blockSize + p % blockSize) * c + from);
  const int64_t bytes = (count < 0 ? c : count) * 2;
  for (int64_t line = 0; line < bytes; line += 64) _mm_prefetch(at + line, _MM_HINT_T0);
}

#if defined(CHATRL_LANES)
// Softmax of n scores in place, kWidth at a time.
void SoftmaxLanes(float* s, int64_t n) {
  using L = Lanes;
  constexpr int64_t W = L::kWidth;
  const int64_t full = n - n % W;
  float mx = -INFINITY;
  if (full > 0) {
    L::V m = L::Load(s);
    for (int64_t j = W; j < full; j += W) m = L::Max(m, L::Load(s + j));
    mx = L::MaxOf(m);
  }
  for (int64_t j = full; j < n; ++j) mx = std::max(mx, s[j]);
  const L::V shift = L::Set(-mx);
  L::V sums = L::Zero();
  for (int64_t j = 0; j < full; j += W) {
    const L::V e = ExpNonPositive(L::Add(L::Load(s + j), shift));
    L::Store(s + j, e);
    sums = L::Add(sums, e);
  }
  float sum = L::Sum(sums);
  if (full < n) {  // the tail through one padded register
    float tail[W];
    std::fill(tail, tail + W, -INFINITY);
    std::copy(s + full, s + n, tail);
    L::Store(tail, ExpNonPositive(L::Add(L::Load(tail), shift)));
    for (int64_t j = full; j < n; ++j) sum += s[j] = tail[j - full];
  }
  const L::V inv = L::Set(1.0f / sum);
  for (int64_t j = 0; j < full; j += W) L::Store(s + j, L::Mul(L::Load(s + j), inv));
  for (int64_t j = full; j < n; ++j) s[j] *= 1.0f / sum;
}

// out[first..first+N) (in vectors) = sum over positions j of probs[head][j] * v[j]: N output
// vectors held in registers through the whole pass over the row's values.
template <int N>
void PagedValues(const float* probs, const uint16_t* vPool, const int32_t* blocks, int64_t seen,
                 int64_t c, int64_t blockSize, int64_t maxLength, int64_t perHead, int64_t first,
                 float* out) {
  using L = Lanes;
  L::V acc[N];
  for (int i = 0; i < N; ++i) acc[i] = L::Zero();
  const float* p[N];
  for (int i = 0; i < N; ++i) p[i] = probs + ((first + i) / perHead) * maxLength;
  for (int64_t b = 0, j = 0; j < seen; ++b) {
    const uint16_t* vb = vPool + static_cast<int64_t>(blocks[b]) * blockSize * c;
    for (int64_t t = 0; t < blockSize && j < seen; ++t, ++j) {
      const uint16_t* vj = vb + t * c + first * L::kWidth;
      if (j + kAhead < seen)
        PrefetchPosition(vPool, blocks, j + kAhead, blockSize, c, first * L::kWidth, N * L::kWidth);
      for (int i = 0; i < N; ++i)
        acc[i] = L::Fma(L::Set(p[i][j]), L::LoadHalf(vj + i * L::kWidth), acc[i]);
    }
  }
  for (int i = 0; i < N; ++i) L::Store(out + (first + i) * L::kWidth, acc[i]);
}
#endif

// One row's attention over its cached positions, every head at once: a position's key (all
// heads, C values side by side) is read in one sequential pass, which the hardware prefetcher
// follows; then each head's softmax; then the values, a few output registers at a time.
// scores: [nh, maxLength] scratch; out: [C].
void PagedRow(const float* q, const uint16_t* kPool, const uint16_t* vPool, const int32_t* blocks,
              int64_t seen, int64_t nh, int64_t hs, int64_t blockSize, int64_t maxLength,
              float scale, float* scores, float* out) {
  const int64_t c = nh * hs;
#if defined(CHATRL_LANES)
  using L = Lanes;
  if (hs % L::kWidth == 0) {
    for (int64_t b = 0, j = 0; j < seen; ++b) {
      const uint16_t* kb = kPool + static_cast<int64_t>(blocks[b]) * blockSize * c;
      for (int64_t o = 0; o < blockSize && j < seen; ++o, ++j) {
        const uint16_t* kj = kb + o * c;
        if (j + kAhead < seen) PrefetchPosition(kPool, blocks, j + kAhead, blockSize, c);
        for (int64_t h = 0; h < nh; ++h) {
          L::V acc = L::Zero();
          for (int64_t d = h * hs; d < (h + 1) * hs; d += L::kWidth)
            acc = L::Fma(L::Load(q + d), L::LoadHalf(kj + d), acc);
          scores[h * maxLength + j] = scale * L::Sum(acc);
        }
      }
    }
    for (int64_t h = 0; h < nh; ++h) SoftmaxLanes(scores + h * maxLength, seen);
    const int64_t vectors = c / L::kWidth, perHead = hs / L::kWidth;
    int64_t i = 0;
    for (; i + 8 <= vectors; i += 8)
      PagedValues<8>(scores, vPool, blocks, seen, c, blockSize, maxLength, perHead, i, out);
    for (; i + 2 <= vectors; i += 2)
      PagedValues<2>(scores, vPool, blocks, seen, c, blockSize, maxLength, perHead, i, out);
    for (; i < vectors; ++i)
      PagedValues<1>(scores, vPool, blocks, seen, c, blockSize, maxLength, perHead, i, out);
    return;
  }
#endif
  for (int64_t b = 0, j = 0; j < seen; ++b) {
    const uint16_t* kb = kPool + static_cast<int64_t>(blocks[b]) * blockSize * c;
    for (int64_t o = 0; o < blockSize && j < seen; ++o, ++j) {
      const uint16_t* kj = kb + o * c;
      for (int64_t h = 0; h < nh; ++h) {
        float dot = 0.0f;
        for (int64_t d = h * hs; d < (h + 1) * hs; ++d) dot += q[d] * HalfToFloat(kj[d]);
        scores[h * maxLength + j] = scale * dot;
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    float* ph = scores + h * maxLength;
    float mx = -INFINITY;
    for (int64_t j = 0; j < seen; ++j) mx = std::max(mx, ph[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < seen; ++j) {
      ph[j] = std::exp(ph[j] - mx);
      sum += ph[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < seen; ++j) ph[j] *= inv;
  }
  std::fill(out, out + c, 0.0f);
  for (int64_t b = 0, j = 0; j < seen; ++b) {
    const uint16_t* vb = vPool + static_cast<int64_t>(blocks[b]) * blockSize * c;
    for (int64_t t = 0; t < blockSize && j < seen; ++t, ++j) {
      const uint16_t* vj = vb + t * c;
      for (int64_t h = 0; h < nh; ++h) {
        const float pj = scores[h * maxLength + j];
        for (int64_t d = h * hs; d < (h + 1) * hs; ++d) out[d] += pj * HalfToFloat(vj[d]);
      }
    }
  }
}

// Why a decode step's rows do not fit their block table or the pool, or "" when they do.
std::string PagedCheck(const int32_t* table, const int32_t* lengths, int64_t rows,
                       int64_t blockSize, int64_t maxBlocks, int64_t poolPositions) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t len = lengths[r];
    if (len < 0 || len >= maxBlocks * blockSize) return "a row's length is outside its block table";
    for (int64_t b = 0; b <= len / blockSize; ++b) {
      const int64_t block = table[r * maxBlocks + b];
      if (block < 0 || (block + 1) * blockSize > poolPositions)
        return "a block id is outside the pool";
    }
  }
  return "";
}

// One decode step's attention (rows checked by PagedCheck): each row's key and value (the
// second and third thirds of qkv[r], [3C]) go in at position lengths[r], then each head's query
// attends to positions 0..lengths[r]. out: [rows, C].
void PagedStep(const float* qkv, uint16_t* kPool, uint16_t* vPool, const int32_t* table,
               const int32_t* lengths, float* out, int64_t rows, int64_t nh, int64_t hs,
               int64_t blockSize, int64_t maxBlocks, float scale) {
  const int64_t c = nh * hs;
  for (int64_t r = 0; r < rows; ++r) {
    // This step's key and value go in first: the query sees its own position.
    const int64_t at = PoolPosition(table, r, maxBlocks, blockSize, lengths[r]) * c;
    FloatToHalf(qkv + r * 3 * c + c, kPool + at, c);
    FloatToHalf(qkv + r * 3 * c + 2 * c, vPool + at, c);
  }
  int64_t work = 0;
  for (int64_t r = 0; r < rows; ++r) work += (lengths[r] + 1) * c * 2;
  const int64_t maxLength = maxBlocks * blockSize;
  std::vector<std::vector<float>> scratch(std::max(1, workerThreads),
                                          std::vector<float>(nh * maxLength));
  ParallelFor(rows, work, [&](int64_t r, int worker) {
    PagedRow(qkv + r * 3 * c, kPool, vPool, table + r * maxBlocks, lengths[r] + 1, nh, hs,
             blockSize, maxLength, scale, scratch[worker].data(), out + r * c);
  });
}

// pagedAttention(qkv, kPool, vPool, table, lengths, out, rows, nh, hs, blockSize, maxBlocks,
// poolPositions, scale): one decode step's attention (PagedStep). kPool, vPool: Uint16Array of
// float16 bits. out: [rows, C], heads side by side (the layout the output projection takes).
// Rows outside their table or the pool are a RangeError, and then nothing is written.
Napi::Value PagedAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 13, "pagedAttention")) return env.Undefined();
  const int64_t rows = Int(info, 6), nh = Int(info, 7), hs = Int(info, 8),
                blockSize = Int(info, 9), maxBlocks = Int(info, 10), poolPositions = Int(info, 11);
  const float scale = info[12].As<Napi::Number>().FloatValue();
  const int64_t c = nh * hs;
  const float* qkv = FloatData(info[0], rows * 3 * c, "qkv", env);
  uint16_t* kPool = qkv ? HalfData(info[1], poolPositions * c, "kPool", env) : nullptr;
  uint16_t* vPool = kPool ? HalfData(info[2], poolPositions * c, "vPool", env) : nullptr;
  const int32_t* table = vPool ? IntData(info[3], rows * maxBlocks, "table", env) : nullptr;
  const int32_t* lengths = table ? IntData(info[4], rows, "lengths", env) : nullptr;
  float* out = lengths ? FloatData(info[5], rows * c, "out", env) : nullptr;
  if (out == nullptr) return env.Undefined();
  const std::string wrong = PagedCheck(table, lengths, rows, blockSize, maxBlocks, poolPositions);
  if (!wrong.empty()) {
    Napi::RangeError::New(env, "pagedAttention: " + wrong).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  PagedStep(qkv, kPool, vPool, table, lengths, out, rows, nh, hs, blockSize, maxBlocks, scale);
  return env.Undefined();
}

// The norms and activations a transformer block may have (ModelConfig's norm and activation).
constexpr int kLayerNorm = 0, kRmsNorm = 1;
constexpr int kGelu = 0, kRelu = 1;

// Row by row: layer norm (gamma, beta) or RMS norm (gamma; beta null), as the model's Norm.
void NormRows(const float* x, const float* gamma, const float* beta, float* y, int64_t rows,
              int64_t cols, float eps, int norm) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    if (norm == kLayerNorm) {
      float mu, rs;
      LayerNormRow(xr, gamma, beta, yr, cols, eps, &mu, &rs);
      continue;
    }
    const float rs = 1.0f / std::sqrt(RowSquares(xr, cols, 0.0f) / cols + eps);
    for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] * rs * gamma[j];
  }
}

// GPT-2's tanh GELU, 0.5 v (1 + tanh u) with u = sqrt(2/pi) (v + 0.044715 v^3), computed as the
// equal v sigmoid(2u) = v / (1 + e^-2u): one exponential of -2|u| <= 0 (e = e^-2|u|; where
// u < 0 it is v e / (1 + e)), kWidth values at a time. Its derivative is s + 2 v s (1 - s) u'
// with s = sigmoid(2u), s (1 - s) = e / (1 + e)^2 and u' = sqrt(2/pi) (1 + 3 0.044715 v^2).
// A scalar std::tanh per value made a GELU model's decode step 2-3x a ReLU model's, and GELU's
// nine tfjs ops (forward and backward) cost training ~40% of its speed.
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

inline float GeluInner(float v) { return kGeluC * (v + kGeluA * (v * v * v)); }

inline float GeluValue(float v) {
  const float u = GeluInner(v);
  const float e = std::exp(-2.0f * std::fabs(u));
  return u >= 0.0f ? v / (1.0f + e) : v * e / (1.0f + e);
}

inline float GeluSlope(float v) {
  const float u = GeluInner(v);
  const float e = std::exp(-2.0f * std::fabs(u));
  const float s = u >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  const float du = kGeluC * (1.0f + 3.0f * kGeluA * (v * v));
  return s + 2.0f * v * (e / ((1.0f + e) * (1.0f + e))) * du;
}

#if defined(CHATRL_LANES)
// kWidth values v with their u, e = e^-2|u| and 1 + e.
struct GeluLanes {
  Lanes::V v, u, e, den;
  explicit GeluLanes(const float* x) {
    using L = Lanes;
    v = L::Load(x);
    u = L::Mul(L::Set(kGeluC), L::Fma(L::Mul(L::Set(kGeluA), v), L::Mul(v, v), v));
    e = ExpNonPositive(L::Mul(L::Set(-2.0f), L::Abs(u)));
    den = L::Add(L::Set(1.0f), e);
  }
};
#endif

// y = gelu(x) over n values (y may be x).
void GeluValues(const float* x, float* y, int64_t n) {
  int64_t j = 0;
#if defined(CHATRL_LANES)
  using L = Lanes;
  for (; j + L::kWidth <= n; j += L::kWidth) {
    const GeluLanes g(x + j);
    L::Store(y + j, L::IfNonNegative(g.u, L::Div(g.v, g.den), L::Div(L::Mul(g.v, g.e), g.den)));
  }
#endif
  for (; j < n; ++j) y[j] = GeluValue(x[j]);
}

// dx = dy gelu'(x) over n values.
void GeluGradValues(const float* x, const float* dy, float* dx, int64_t n) {
  int64_t j = 0;
#if defined(CHATRL_LANES)
  using L = Lanes;
  const L::V one = L::Set(1.0f);
  for (; j + L::kWidth <= n; j += L::kWidth) {
    const GeluLanes g(x + j);
    const L::V s = L::IfNonNegative(g.u, L::Div(one, g.den), L::Div(g.e, g.den));
    const L::V du = L::Mul(L::Set(kGeluC), L::Fma(L::Set(3.0f * kGeluA), L::Mul(g.v, g.v), one));
    const L::V spread = L::Div(g.e, L::Mul(g.den, g.den));  // s (1 - s)
    const L::V slope = L::Fma(L::Mul(L::Set(2.0f), g.v), L::Mul(spread, du), s);
    L::Store(dx + j, L::Mul(L::Load(dy + j), slope));
  }
#endif
  for (; j < n; ++j) dx[j] = dy[j] * GeluSlope(x[j]);
}

// GELU or ReLU in place over rows of `cols` values, each row alike whatever the row count.
void Activate(float* x, int64_t rows, int64_t cols, int act) {
  if (act == kRelu) {
    for (int64_t i = 0; i < rows * cols; ++i) x[i] = std::max(x[i], 0.0f);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) GeluValues(x + r * cols, x + r * cols, cols);
}

// Runs body(from, to) over [0, n) in ranges of whole 64-value pieces split over the threads:
// which values take the vector loop does not depend on the thread count.
template <typename Body>
void ElementPieces(int64_t n, Body body) {
  constexpr int64_t kPiece = 64;
  ParallelRanges((n + kPiece - 1) / kPiece, n, [&](int64_t from, int64_t to, int) {
    body(from * kPiece, std::min(n, to * kPiece));
  });
}

// geluForward(x, y, n) and geluBackward(x, dy, dx, n): the model's GELU for training.
Napi::Value GeluForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 3, "geluForward")) return env.Undefined();
  const int64_t n = Int(info, 2);
  const float* x = FloatData(info[0], n, "x", env);
  float* y = x ? FloatData(info[1], n, "y", env) : nullptr;
  if (y == nullptr) return env.Undefined();
  ElementPieces(n, [&](int64_t from, int64_t to) { GeluValues(x + from, y + from, to - from); });
  return env.Undefined();
}

Napi::Value GeluBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 4, "geluBackward")) return env.Undefined();
  const int64_t n = Int(info, 3);
  const float* x = FloatData(info[0], n, "x", env);
  const float* dy = x ? FloatData(info[1], n, "dy", env) : nullptr;
  float* dx = dy ? FloatData(info[2], n, "dx", env) : nullptr;
  if (dx == nullptr) return env.Undefined();
  ElementPieces(n, [&](int64_t from, int64_t to) {
    GeluGradValues(x + from, dy + from, dx + from, to - from);
  });
  return env.Undefined();
}

// normRows(x, gamma, beta | null, y, rows, cols, eps): layer norm (with beta) or RMS norm (without)
// of each row, as the decode layer's norms: a decode step's final norm outside tfjs.
Napi::Value NormRowsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 7, "normRows")) return env.Undefined();
  const int64_t rows = Int(info, 4), cols = Int(info, 5);
  const float eps = info[6].As<Napi::Number>().FloatValue();
  const bool hasBeta = !info[2].IsNull() && !info[2].IsUndefined();
  const float* x = FloatData(info[0], rows * cols, "x", env);
  const float* gamma = x ? FloatData(info[1], cols, "gamma", env) : nullptr;
  const float* beta = gamma && hasBeta ? FloatData(info[2], cols, "beta", env) : nullptr;
  float* y = gamma && (beta || !hasBeta) ? FloatData(info[3], rows * cols, "y", env) : nullptr;
  if (y == nullptr) return env.Undefined();
  NormRows(x, gamma, beta, y, rows, cols, eps, hasBeta ? kLayerNorm : kRmsNorm);
  return env.Undefined();
}

// decodeLayer(x, out, ln1g, ln1b | null, wQkv, bQkv, wProj, bProj, ln2g, ln2b | null, wFc, bFc,
// wFc2, bFc2, kPool, vPool, table, lengths, rows, c, nh, hidden, blockSize, maxBlocks,
// poolPositions, scale, eps, norm, act): one transformer block of a decode step in one call, the
// model's Block.forward on a paged cache and packed weights (packPanels) without a dispatch per
// op. x, out: [rows, C]. out = h + mlp(norm2(h)) with h = x + proj(attention(qkv(norm1(x)))).
Napi::Value DecodeLayer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 29, "decodeLayer")) return env.Undefined();
  const int64_t rows = Int(info, 18), c = Int(info, 19), nh = Int(info, 20),
                hidden = Int(info, 21), blockSize = Int(info, 22), maxBlocks = Int(info, 23),
                poolPositions = Int(info, 24);
  const float scale = info[25].As<Napi::Number>().FloatValue();
  const float eps = info[26].As<Napi::Number>().FloatValue();
  const int norm = static_cast<int>(Int(info, 27)), act = static_cast<int>(Int(info, 28));
  // Each argument is read only while none before it threw.
  bool ok = true;
  const auto floats = [&](size_t i, int64_t n, const char* name) -> float* {
    float* data = ok ? FloatData(info[i], n, name, env) : nullptr;
    ok = data != nullptr;
    return data;
  };
  const auto weight = [&](size_t i, int64_t in, int64_t outDim, const char* name) {
    const PackedWeight w = ok ? PackedData(info[i], in, outDim, name, env) : PackedWeight();
    ok = w.ok();
    return w;
  };
  const auto optional = [&](size_t i, int64_t n, const char* name) -> const float* {
    return info[i].IsNull() || info[i].IsUndefined() ? nullptr : floats(i, n, name);
  };
  const float* x = floats(0, rows * c, "x");
  float* out = floats(1, rows * c, "out");
  const float* ln1g = floats(2, c, "ln1g");
  const float* ln1b = optional(3, c, "ln1b");
  const PackedWeight wQkv = weight(4, c, 3 * c, "wQkv");
  const float* bQkv = floats(5, 3 * c, "bQkv");
  const PackedWeight wProj = weight(6, c, c, "wProj");
  const float* bProj = floats(7, c, "bProj");
  const float* ln2g = floats(8, c, "ln2g");
  const float* ln2b = optional(9, c, "ln2b");
  const PackedWeight wFc = weight(10, c, hidden, "wFc");
  const float* bFc = floats(11, hidden, "bFc");
  const PackedWeight wFc2 = weight(12, hidden, c, "wFc2");
  const float* bFc2 = floats(13, c, "bFc2");
  uint16_t* kPool = ok ? HalfData(info[14], poolPositions * c, "kPool", env) : nullptr;
  uint16_t* vPool = kPool ? HalfData(info[15], poolPositions * c, "vPool", env) : nullptr;
  const int32_t* table = vPool ? IntData(info[16], rows * maxBlocks, "table", env) : nullptr;
  const int32_t* lengths = table ? IntData(info[17], rows, "lengths", env) : nullptr;
  if (lengths == nullptr) return env.Undefined();
  if ((norm == kLayerNorm) != (ln1b != nullptr && ln2b != nullptr) ||
      (norm != kLayerNorm && norm != kRmsNorm) || (act != kGelu && act != kRelu)) {
    Napi::TypeError::New(env,
                         "decodeLayer: a layer norm takes gamma and beta, an RMS norm gamma "
                         "alone; norm and act are 0 or 1")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string wrong = PagedCheck(table, lengths, rows, blockSize, maxBlocks, poolPositions);
  if (!wrong.empty()) {
    Napi::RangeError::New(env, "decodeLayer: " + wrong).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Kept between calls: a prefill's rows make these hundreds of KB, which fresh vectors took
  // from the kernel as new pages (faulted in and zeroed) on every call. Each is written whole
  // before it is read.
  thread_local std::vector<float> h, qkv, att, y, f;
  h.resize(rows * c);
  qkv.resize(rows * 3 * c);
  att.resize(rows * c);
  y.resize(rows * c);
  f.resize(rows * hidden);
  NormRows(x, ln1g, ln1b, h.data(), rows, c, eps, norm);
  PackedProduct(h.data(), wQkv, bQkv, qkv.data(), rows, c, 3 * c);
  PagedStep(qkv.data(), kPool, vPool, table, lengths, att.data(), rows, nh, c / nh, blockSize,
            maxBlocks, scale);
  PackedProduct(att.data(), wProj, bProj, y.data(), rows, c, c);
  for (int64_t i = 0; i < rows * c; ++i) out[i] = x[i] + y[i];
  NormRows(out, ln2g, ln2b, h.data(), rows, c, eps, norm);
  PackedProduct(h.data(), wFc, bFc, f.data(), rows, c, hidden);
  Activate(f.data(), rows, hidden, act);
  PackedProduct(f.data(), wFc2, bFc2, y.data(), rows, hidden, c);
  for (int64_t i = 0; i < rows * c; ++i) out[i] += y[i];
  return env.Undefined();
}

// pagedStore(src, pool, table, sources, starts, counts, rows, nh, time, hs, blockSize, maxBlocks,
// poolPositions): copies prefilled keys (or values) into rows' blocks, as float16. src: [N, nh,
// time, hs] (a prefill's cache, head layout); row r takes counts[r] positions of src row
// sources[r] from position starts[r] on (after its padding), as its positions 0..counts[r]-1.
Napi::Value PagedStore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 13, "pagedStore")) return env.Undefined();
  const int64_t rows = Int(info, 6), nh = Int(info, 7), time = Int(info, 8), hs = Int(info, 9),
                blockSize = Int(info, 10), maxBlocks = Int(info, 11), poolPositions = Int(info, 12);
  const int64_t c = nh * hs;
  const float* src = FloatData(info[0], 0, "src", env);
  uint16_t* pool = src ? HalfData(info[1], poolPositions * c, "pool", env) : nullptr;
  const int32_t* table = pool ? IntData(info[2], rows * maxBlocks, "table", env) : nullptr;
  const int32_t* sources = table ? IntData(info[3], rows, "sources", env) : nullptr;
  const int32_t* starts = sources ? IntData(info[4], rows, "starts", env) : nullptr;
  const int32_t* counts = starts ? IntData(info[5], rows, "counts", env) : nullptr;
  if (counts == nullptr) return env.Undefined();
  const size_t srcSize = info[0].As<Napi::Float32Array>().ElementLength();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = counts[r], from = starts[r], s = sources[r];
    const bool inside = n >= 0 && from >= 0 && from + n <= time && n <= maxBlocks * blockSize &&
                        s >= 0 && static_cast<size_t>((s + 1) * nh * time * hs) <= srcSize;
    bool blocksInside = inside;
    for (int64_t b = 0; blocksInside && b * blockSize < n; ++b) {
      const int64_t block = table[r * maxBlocks + b];
      blocksInside = block >= 0 && (block + 1) * blockSize <= poolPositions;
    }
    if (!blocksInside) {
      Napi::RangeError::New(env, "pagedStore: a row's positions or blocks are out of range")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    for (int64_t p = 0; p < n; ++p) {
      uint16_t* dst = pool + PoolPosition(table, r, maxBlocks, blockSize, p) * c;
      for (int64_t h = 0; h < nh; ++h)
        FloatToHalf(src + ((s * nh + h) * time + from + p) * hs, dst + h * hs, hs);
    }
  }
  return env.Undefined();
}

// crossEntropyForward(logits, targets, nll, logSumExp, rows, classes)
// nll[i] = logsumexp(logits[i]) - logits[i, targets[i]]; logSumExp is kept for the backward.
Napi::Value CrossEntropyForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 6, "crossEntropyForward")) return env.Undefined();
  const int64_t rows = Int(info, 4), classes = Int(info, 5);
  const float* logits = FloatData(info[0], rows * classes, "logits", env);
  const int32_t* targets = logits ? IntData(info[1], rows, "targets", env) : nullptr;
  float* nll = targets ? FloatData(info[2], rows, "nll", env) : nullptr;
  float* lse = nll ? FloatData(info[3], rows, "logSumExp", env) : nullptr;
  if (lse == nullptr || classes == 0) return env.Undefined();
  ParallelRanges(rows, rows * classes, [&](int64_t from, int64_t to, int) {
    for (int64_t r = from; r < to; ++r) {
      const float* x = logits + r * classes;
      float mx = x[0];
      for (int64_t j = 1; j < classes; ++j) mx = std::max(mx, x[j]);
      float sum = 0.0f;
      for (int64_t j = 0; j < classes; ++j) sum += std::exp(x[j] - mx);
      lse[r] = mx + std::log(sum);
      nll[r] = ValidTarget(targets[r], classes) ? lse[r] - x[targets[r]] : 0.0f;
    }
  });
  return env.Undefined();
}

// crossEntropyBackward(logits, targets, logSumExp, dNll, dLogits, rows, classes)
// dLogits[i, j] = dNll[i] * (softmax(logits[i])[j] - [j == targets[i]]).
Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 7, "crossEntropyBackward")) return env.Undefined();
  const int64_t rows = Int(info, 5), classes = Int(info, 6);
  const float* logits = FloatData(info[0], rows * classes, "logits", env);
  const int32_t* targets = logits ? IntData(info[1], rows, "targets", env) : nullptr;
  const float* lse = targets ? FloatData(info[2], rows, "logSumExp", env) : nullptr;
  const float* dNll = lse ? FloatData(info[3], rows, "dNll", env) : nullptr;
  float* dLogits = dNll ? FloatData(info[4], rows * classes, "dLogits", env) : nullptr;
  if (dLogits == nullptr) return env.Undefined();
  ParallelRanges(rows, rows * classes, [&](int64_t from, int64_t to, int) {
    for (int64_t r = from; r < to; ++r) {
      const float* x = logits + r * classes;
      float* d = dLogits + r * classes;
      if (!ValidTarget(targets[r], classes)) {
        std::fill(d, d + classes, 0.0f);
        continue;
      }
      const float g = dNll[r];
      for (int64_t j = 0; j < classes; ++j) d[j] = g * std::exp(x[j] - lse[r]);
      d[targets[r]] -= g;
    }
  });
  return env.Undefined();
}

// adamw(p, m, v, g, pOut, mOut, vOut, n, lr, beta1, beta2, eps, weightDecay, bc1, bc2)
// One AdamW step for one tensor, in the order of torch.optim.AdamW's arithmetic:
// m' = b1 m + (1 - b1) g; v' = b2 v + (1 - b2) g^2;
// p' = p (1 - lr wd) - lr / bc1 * m' / (sqrt(v') / sqrt(bc2) + eps).
Napi::Value AdamW(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 15, "adamw")) return env.Undefined();
  const int64_t n = Int(info, 7);
  const float* p = FloatData(info[0], n, "p", env);
  const float* m = p ? FloatData(info[1], n, "m", env) : nullptr;
  const float* v = m ? FloatData(info[2], n, "v", env) : nullptr;
  const float* g = v ? FloatData(info[3], n, "g", env) : nullptr;
  float* pOut = g ? FloatData(info[4], n, "pOut", env) : nullptr;
  float* mOut = pOut ? FloatData(info[5], n, "mOut", env) : nullptr;
  float* vOut = mOut ? FloatData(info[6], n, "vOut", env) : nullptr;
  if (vOut == nullptr) return env.Undefined();
  auto num = [&](size_t i) { return info[i].As<Napi::Number>().DoubleValue(); };
  const double lr = num(8), beta1 = num(9), beta2 = num(10), eps = num(11), wd = num(12),
               bc1 = num(13), bc2 = num(14);
  const float b1 = beta1, oneMinusB1 = 1 - beta1, b2 = beta2, oneMinusB2 = 1 - beta2;
  const float keep = 1 - lr * wd, stepSize = lr / bc1, invSqrtBc2 = 1 / std::sqrt(bc2);
  const float epsF = eps;
  ParallelRanges(n, n, [&](int64_t from, int64_t to, int) {
    for (int64_t i = from; i < to; ++i) {
      const float mi = b1 * m[i] + oneMinusB1 * g[i];
      const float vi = b2 * v[i] + oneMinusB2 * (g[i] * g[i]);
      mOut[i] = mi;
      vOut[i] = vi;
      pOut[i] = p[i] * keep - stepSize * (mi / (std::sqrt(vi) * invSqrtBc2 + epsF));
    }
  });
  return env.Undefined();
}

// setThreads(n): threads for OpenBLAS products and for our own parallel loops.
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  workerThreads = std::max(1, static_cast<int>(Int(info, 0)));
  return info.Env().Undefined();
}

Napi::Value GetThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), workerThreads);
}

// { config, core, chosenCore }: what OpenBLAS runs, for benchmarks and error reports.
Napi::Value BlasInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("config", std::string(blas.config()));
  o.Set("core", std::string(blas.coreName()));
  o.Set("chosenCore", blas.chosenCore);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  std::string error = LoadBlas();
  if (!error.empty()) {
    Napi::Error::New(env, error).ThrowAsJavaScriptException();
    return exports;
  }
  workerThreads = blas.getThreads();
#if defined(CHATRL_AVX512_BF16)
  if (VectorBf16Available()) bf16Best = Bf16Kernel::kVector;
#endif
#if defined(CHATRL_AMX)
  if (AmxAvailable()) bf16Best = Bf16Kernel::kAmx;
#endif
  exports.Set("batchMatMul", Napi::Function::New(env, BatchMatMul));
  exports.Set("linear", Napi::Function::New(env, Linear));
  exports.Set("packPanels", Napi::Function::New(env, PackPanels));
  exports.Set("linearPanels", Napi::Function::New(env, LinearPanels));
  exports.Set("packBf16", Napi::Function::New(env, PackBf16));
  exports.Set("bf16Kernel", Napi::Function::New(env, Bf16KernelName));
  exports.Set("setBf16Kernel", Napi::Function::New(env, SetBf16Kernel));
  exports.Set("columnSum", Napi::Function::New(env, ColumnSum));
  exports.Set("attentionForward", Napi::Function::New(env, AttentionForward));
  exports.Set("attentionBackward", Napi::Function::New(env, AttentionBackward));
  exports.Set("layerNormForward", Napi::Function::New(env, LayerNormForward));
  exports.Set("layerNormBackward", Napi::Function::New(env, LayerNormBackward));
  exports.Set("toHeads", Napi::Function::New(env, MoveHeads<true>));
  exports.Set("fromHeads", Napi::Function::New(env, MoveHeads<false>));
  exports.Set("crossEntropyForward", Napi::Function::New(env, CrossEntropyForward));
  exports.Set("crossEntropyBackward", Napi::Function::New(env, CrossEntropyBackward));
  exports.Set("adamw", Napi::Function::New(env, AdamW));
  exports.Set("pagedAttention", Napi::Function::New(env, PagedAttention));
  exports.Set("decodeLayer", Napi::Function::New(env, DecodeLayer));
  exports.Set("normRows", Napi::Function::New(env, NormRowsJs));
  exports.Set("geluForward", Napi::Function::New(env, GeluForward));
  exports.Set("geluBackward", Napi::Function::New(env, GeluBackward));
  exports.Set("pagedStore", Napi::Function::New(env, PagedStore));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("getThreads", Napi::Function::New(env, GetThreads));
  exports.Set("blasInfo", Napi::Function::New(env, BlasInfo));
  return exports;
}

}  // namespace

NODE_API_MODULE(chatrl_kernels, Init)
