// sm121-probe: a deliberately small CUDA extension that proves a CUDA
// toolchain and GPU work together (written for NVIDIA DGX Spark / GB10,
// compute capability 12.1, but it runs on any GPU it was compiled for).
//
// All functions run on the current CUDA device (device 0 unless changed).
// Every CUDA failure is raised as RuntimeError("<cudaErrorName>: <text> (<call>)").

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef SM121_PROBE_CUDA_ARCHS
#error "SM121_PROBE_CUDA_ARCHS must be defined by the build (see CMakeLists.txt)"
#endif

namespace py = pybind11;

// A named namespace rather than an anonymous one on purpose: nvcc mangles
// kernels in an anonymous namespace with a per-compilation random id, which
// would make two builds of the same source differ byte for byte. The module
// is built with -fvisibility=hidden, so none of this is exported anyway.
namespace sm121_probe {

constexpr int kThreads = 256;        // threads per block for every kernel
constexpr int kMaxBlocks = 1024;     // grid-stride loops cover the rest
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------- errors

std::string describe(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

void check(cudaError_t err, const char* call) {
  if (err != cudaSuccess) {
    // Clear the (non-sticky) error so later calls do not see it again.
    (void)cudaGetLastError();
    throw std::runtime_error(describe(err) + " (" + call + ")");
  }
}

#define PROBE_CHECK(expr) check((expr), #expr)

// Errors from cudaGetDeviceCount() that just mean "there is no usable GPU
// here": no device, no driver / libcuda.so.1, a stub libcuda, or a driver
// that cannot serve this runtime.
bool means_no_device(cudaError_t err) {
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorStubLibrary:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------- RAII

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count_ > 0) {
      check(cudaMalloc(reinterpret_cast<void**>(&ptr_), count_ * sizeof(T)), "cudaMalloc");
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) {
      (void)cudaFree(ptr_);  // never throw from a destructor
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

void check_launch(const char* kernel) {
  // Launch-time errors (e.g. cudaErrorNoKernelImageForDevice) show up here;
  // execution errors surface at the next synchronising call.
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(describe(err) + " (launch of " + kernel + ")");
  }
}

int blocks_for(std::size_t n) {
  std::size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(blocks, kMaxBlocks)));
}

// ---------------------------------------------------------------- kernels

__global__ void arch_kernel(int* out) {
#ifdef __CUDA_ARCH__
  *out = __CUDA_ARCH__;
#else
  *out = -1;
#endif
}

__global__ void saxpy_kernel(float a, const float* __restrict__ x, float* __restrict__ y,
                             std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(blockDim.x) * gridDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    // Explicit round-to-nearest multiply then add (no FMA contraction), so
    // the result is exactly float32(float32(a * x) + y) as on a plain CPU.
    y[i] = __fadd_rn(__fmul_rn(a, x[i]), y[i]);
  }
}

// Block-wide sum of one double per thread: warp shuffles, then one shared
// memory slot per warp, then a final shuffle in warp 0. Result in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_down_sync(kFullMask, v, offset);
  }
  if (lane == 0) {
    warp_sums[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = (lane < kThreads / 32) ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) {
      v += __shfl_down_sync(kFullMask, v, offset);
    }
  }
  return v;
}

// Pass 1: each block reduces a grid-strided slice of x*x (in double) to one
// partial sum. Pass 2 (one block) reduces the partials. Two passes instead of
// atomics keep the result bit-for-bit deterministic.
__global__ void sum_squares_partial(const float* __restrict__ x, std::size_t n,
                                    double* __restrict__ partials) {
  double acc = 0.0;
  const std::size_t stride = static_cast<std::size_t>(blockDim.x) * gridDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const double v = x[i];
    acc += v * v;  // exact: a float32 squared fits in a double
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = acc;
  }
}

__global__ void sum_partials(const double* __restrict__ partials, int count,
                             double* __restrict__ out) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    acc += partials[i];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    *out = acc;
  }
}

// ---------------------------------------------------------------- API

int device_count() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess) {
    return count;
  }
  (void)cudaGetLastError();
  if (means_no_device(err)) {
    return 0;
  }
  throw std::runtime_error(describe(err) + " (cudaGetDeviceCount)");
}

// "" when the CUDA runtime finds at least one device, otherwise the reason
// (so a "0 devices" answer can be explained to the user).
std::string cuda_init_error() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return describe(err);
  }
  return count > 0 ? std::string() : std::string("no CUDA device reported");
}

py::dict device_info(int index) {
  cudaDeviceProp prop{};
  int driver = 0;
  int runtime = 0;
  check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  PROBE_CHECK(cudaDriverGetVersion(&driver));
  PROBE_CHECK(cudaRuntimeGetVersion(&runtime));

  py::dict info;
  info["name"] = std::string(prop.name);
  info["major"] = prop.major;
  info["minor"] = prop.minor;
  info["sm"] = "sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
  info["total_memory_bytes"] = static_cast<unsigned long long>(prop.totalGlobalMem);
  info["multiprocessors"] = prop.multiProcessorCount;
  info["driver_version"] = driver;
  info["runtime_version"] = runtime;
  return info;
}

std::vector<std::string> built_archs() {
  std::vector<std::string> archs;
  const std::string all = SM121_PROBE_CUDA_ARCHS;
  std::size_t start = 0;
  while (start <= all.size()) {
    std::size_t comma = all.find(',', start);
    if (comma == std::string::npos) {
      comma = all.size();
    }
    if (comma > start) {
      archs.push_back(all.substr(start, comma - start));
    }
    start = comma + 1;
  }
  return archs;
}

int kernel_arch() {
  py::gil_scoped_release release;
  DeviceBuffer<int> out(1);
  int host = 0;
  arch_kernel<<<1, 1>>>(out.get());
  check_launch("arch_kernel");
  PROBE_CHECK(cudaMemcpy(&host, out.get(), out.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

std::vector<float> saxpy(float a, const std::vector<float>& x, std::vector<float> y) {
  if (x.size() != y.size()) {
    throw py::value_error("saxpy: x and y must have the same length (got " +
                          std::to_string(x.size()) + " and " + std::to_string(y.size()) + ")");
  }
  const std::size_t n = x.size();
  if (n == 0) {
    return y;
  }
  py::gil_scoped_release release;
  DeviceBuffer<float> d_x(n);
  DeviceBuffer<float> d_y(n);
  PROBE_CHECK(cudaMemcpy(d_x.get(), x.data(), d_x.bytes(), cudaMemcpyHostToDevice));
  PROBE_CHECK(cudaMemcpy(d_y.get(), y.data(), d_y.bytes(), cudaMemcpyHostToDevice));
  saxpy_kernel<<<blocks_for(n), kThreads>>>(a, d_x.get(), d_y.get(), n);
  check_launch("saxpy_kernel");
  PROBE_CHECK(cudaMemcpy(y.data(), d_y.get(), d_y.bytes(), cudaMemcpyDeviceToHost));
  return y;
}

double sum_squares(const std::vector<float>& x) {
  const std::size_t n = x.size();
  if (n == 0) {
    return 0.0;
  }
  py::gil_scoped_release release;
  const int blocks = blocks_for(n);
  DeviceBuffer<float> d_x(n);
  DeviceBuffer<double> d_partials(static_cast<std::size_t>(blocks));
  DeviceBuffer<double> d_out(1);
  PROBE_CHECK(cudaMemcpy(d_x.get(), x.data(), d_x.bytes(), cudaMemcpyHostToDevice));
  sum_squares_partial<<<blocks, kThreads>>>(d_x.get(), n, d_partials.get());
  check_launch("sum_squares_partial");
  sum_partials<<<1, kThreads>>>(d_partials.get(), blocks, d_out.get());
  check_launch("sum_partials");
  double result = 0.0;
  PROBE_CHECK(cudaMemcpy(&result, d_out.get(), d_out.bytes(), cudaMemcpyDeviceToHost));
  return result;
}

}  // namespace sm121_probe

PYBIND11_MODULE(_core, m) {
  using namespace sm121_probe;
  m.doc() = "sm121-probe: minimal CUDA checks for NVIDIA DGX Spark (sm_121) and other GPUs";
  m.def("device_count", &device_count,
        "Number of CUDA devices; 0 when there is no device or no usable driver.");
  m.def("cuda_init_error", &cuda_init_error,
        "Empty string when CUDA sees a device, else the reason it does not.");
  m.def("device_info", &device_info, py::arg("index"),
        "Dict with name, major, minor, sm, total_memory_bytes, multiprocessors, "
        "driver_version, runtime_version for one device.");
  m.def("built_archs", &built_archs,
        "The CMAKE_CUDA_ARCHITECTURES entries this module was compiled for.");
  m.def("kernel_arch", &kernel_arch,
        "Run a kernel that returns __CUDA_ARCH__ of the code the driver picked (e.g. 1210).");
  m.def("saxpy", &saxpy, py::arg("a"), py::arg("x"), py::arg("y"),
        "a * x + y in float32, computed on the GPU (no FMA contraction).");
  m.def("sum_squares", &sum_squares, py::arg("x"),
        "Sum of x[i]**2 over float32 inputs, reduced on the GPU in double precision.");
}
