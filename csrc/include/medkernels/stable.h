// The torch side of every op, on the LibTorch stable ABI only (torch/csrc/stable, torch/headeronly).
//
// Nothing here, and nothing that includes it, may use ATen, c10 or torch's C++ API: the extension then links to
// torch only through the stable C shim (aoti_torch_* / torch_* functions), so one binary serves every torch from
// the build's torch on (csrc/README.md). The kernel bodies include no torch header at all.
//
// `medkernels::Tensor` is torch::stable::Tensor with the few at::Tensor-style methods the ops use (views,
// copies, casts), each one call into torch's dispatcher. Registered entry points take and return
// torch::stable::Tensor (`STensor`): the stable boxing knows only that type.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/Half.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// The last guard of every op: a std::runtime_error (RuntimeError in Python) whose message is exactly the
// arguments streamed in order, so that it starts with the op name (STD_TORCH_CHECK would prefix the C++
// function, file and line).
#define MK_CHECK(cond, ...)                            \
  do {                                                 \
    if (!(cond)) [[unlikely]]                          \
      ::medkernels::detail::check_failed(__VA_ARGS__); \
  } while (0)

namespace medkernels::detail {
template <class... A>
[[noreturn]] void check_failed(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  throw std::runtime_error(os.str());
}
}  // namespace medkernels::detail

namespace medkernels {

using STensor = torch::stable::Tensor;
using OptSTensor = std::optional<torch::stable::Tensor>;
using ScalarType = torch::headeronly::ScalarType;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

inline constexpr ScalarType kFloat = ScalarType::Float;
inline constexpr ScalarType kDouble = ScalarType::Double;
inline constexpr ScalarType kHalf = ScalarType::Half;
inline constexpr ScalarType kBFloat16 = ScalarType::BFloat16;
inline constexpr ScalarType kLong = ScalarType::Long;
inline constexpr ScalarType kInt = ScalarType::Int;
inline constexpr ScalarType kByte = ScalarType::Byte;

inline int64_t element_size(ScalarType t) {
  switch (t) {
    case kDouble:
    case kLong: return 8;
    case kFloat:
    case kInt: return 4;
    case kHalf:
    case kBFloat16: return 2;
    default: return 1;
  }
}

// Sizes that compare and print like at::IntArrayRef ("[2, 3]"), for shapes and error messages.
struct Shape {
  std::vector<int64_t> v;
  Shape() = default;
  Shape(IntList r) : v(r.begin(), r.end()) {}  // NOLINT: implicit, as IntArrayRef
  Shape(std::initializer_list<int64_t> l) : v(l) {}
  Shape(std::vector<int64_t> x) : v(std::move(x)) {}  // NOLINT
  operator IntList() const { return IntList(v); }     // NOLINT
  bool operator==(const Shape& o) const { return v == o.v; }
  size_t size() const { return v.size(); }
  int64_t operator[](size_t i) const { return v[i]; }
  std::vector<int64_t> vec() const { return v; }
  auto begin() const { return v.begin(); }
  auto end() const { return v.end(); }
  Shape slice(size_t start, size_t len) const {
    return Shape(std::vector<int64_t>(v.begin() + start, v.begin() + start + len));
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    os << '[';
    for (size_t i = 0; i < s.v.size(); ++i) os << (i ? ", " : "") << s.v[i];
    return os << ']';
  }
};

// A device that compares and prints like c10::Device ("cpu", "cuda:0").
struct Dev {
  torch::stable::Device d;
  bool is_cpu() const { return d.is_cpu(); }
  bool operator==(const Dev& o) const { return d.type() == o.d.type() && d.index() == o.d.index(); }
  bool operator!=(const Dev& o) const { return !(*this == o); }
  friend std::ostream& operator<<(std::ostream& os, const Dev& x) {
    os << (x.d.is_cpu() ? "cpu" : x.d.is_cuda() ? "cuda" : "device");
    if (!x.d.is_cpu() && x.d.index() >= 0) os << ':' << int(x.d.index());
    return os;
  }
};

// Any aten operator through the dispatcher; returns the first output.
template <class... Args>
STensor aten(const char* name, const char* overload, const Args&... args) {
  std::array<StableIValue, sizeof...(Args) == 0 ? 1 : sizeof...(Args)> stack{torch::stable::detail::from(args)...};
  MK_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION) == AOTI_TORCH_SUCCESS,
           "medkernels: torch's dispatcher failed on ", name);
  return torch::stable::detail::to<STensor>(stack[0]);
}

class Tensor : public STensor {
 public:
  Tensor() = default;
  Tensor(STensor t) : STensor(std::move(t)) {}  // NOLINT: implicit, every stable tensor is one

  Shape sizes() const { return Shape(STensor::sizes()); }
  int64_t size(int64_t d) const { return STensor::size(d < 0 ? d + dim() : d); }
  int64_t stride(int64_t d) const { return STensor::stride(d < 0 ? d + dim() : d); }
  Dev device() const { return Dev{STensor::device()}; }
  bool is_complex() const {
    const ScalarType t = scalar_type();
    return t == ScalarType::ComplexHalf || t == ScalarType::ComplexFloat || t == ScalarType::ComplexDouble;
  }

  template <class T = void>
  const T* const_data_ptr() const {
    return static_cast<const T*>(STensor::const_data_ptr());
  }
  template <class T = void>
  T* data_ptr() const {
    return static_cast<T*>(STensor::data_ptr());
  }

  Tensor narrow(int64_t d, int64_t start, int64_t len) const {
    STensor self = *this;
    return torch::stable::narrow(self, d, start, len);
  }
  const Tensor& copy_(const STensor& src) const {
    STensor self = *this;
    torch::stable::copy_(self, src);
    return *this;
  }
  const Tensor& zero_() const {
    STensor self = *this;
    torch::stable::zero_(self);
    return *this;
  }
  const Tensor& fill_(double v) const {
    torch::stable::fill_(*this, v);
    return *this;
  }
  // Whether both name the same memory (as at::Tensor::is_same for the tensors the ops make).
  bool is_same(const STensor& o) const { return data_ptr() == o.data_ptr() && numel() == o.numel(); }
  Tensor repeat(const Shape& r) const { return aten("aten::repeat", "", STensor(*this), IntList(r.v)); }
  Tensor t() const { return torch::stable::transpose(*this, 0, 1); }
  Tensor transpose(int64_t a, int64_t b) const { return torch::stable::transpose(*this, a, b); }
  Tensor unsqueeze(int64_t d) const { return torch::stable::unsqueeze(*this, d); }
  Tensor squeeze(int64_t d) const { return torch::stable::squeeze(*this, d); }
  Tensor contiguous() const { return torch::stable::contiguous(*this); }
  Tensor view(const Shape& s) const { return torch::stable::view(*this, IntList(s.v)); }
  Tensor reshape(const Shape& s) const { return torch::stable::reshape(*this, IntList(s.v)); }
  Tensor permute(const Shape& dims) const { return aten("aten::permute", "", STensor(*this), IntList(dims.v)); }
  // A cast; the tensor itself when it already has that dtype (as at::Tensor::to).
  Tensor to(ScalarType t) const { return scalar_type() == t ? *this : Tensor(torch::stable::to(*this, t)); }
  Tensor sum(int64_t d) const {
    const std::vector<int64_t> dims{d};
    return torch::stable::sum(*this, IntList(dims));
  }
  Tensor operator-(const STensor& o) const { return torch::stable::subtract(*this, o); }
  Tensor operator*(const STensor& o) const { return aten("aten::mul", "Tensor", STensor(*this), o); }
  // In place times a number (a 0-dim tensor of this dtype: the same rounding as a Scalar).
  const Tensor& mul_(double v) const {
    const std::vector<int64_t> none;
    const STensor s = torch::stable::full(IntList(none), v, scalar_type(), std::nullopt, STensor::device());
    aten("aten::mul_", "Tensor", STensor(*this), s);
    return *this;
  }
};

// New tensors on `like`'s device: uninitialised (every element is written by the caller) or zero.
inline Tensor empty_on(const STensor& like, const Shape& sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_empty(like, IntList(sizes.v), dtype);
}
inline Tensor zeros_on(const STensor& like, const Shape& sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_zeros(like, IntList(sizes.v), dtype);
}
inline Tensor empty_as(const STensor& t) { return torch::stable::empty_like(t); }
// A CPU byte buffer (scratch space); through torch's allocator, so memory profilers see it.
inline Tensor cpu_bytes(int64_t n) {
  const std::vector<int64_t> sizes{n};
  return torch::stable::empty(IntList(sizes), kByte, std::nullopt,
                              torch::stable::Device(torch::headeronly::DeviceType::CPU));
}

// The value of a one-element CPU tensor.
inline double item_double(const Tensor& t) { return *t.to(kDouble).contiguous().const_data_ptr<double>(); }

// Whether every element of a CPU tensor is finite.
inline bool all_finite(const STensor& t) {
  const Tensor all = aten("aten::all", "", aten("aten::isfinite", "", t));
  return *all.const_data_ptr<bool>();
}

// Calls f(T{}) with T the C++ type of a floating dtype (float, double; with `half`, also torch's Half and BFloat16).
template <bool half = false, class F>
void dispatch_floating(ScalarType t, const char* op, F&& f) {
  switch (t) {
    case kFloat: f(float{}); return;
    case kDouble: f(double{}); return;
    default: break;
  }
  if constexpr (half) {
    if (t == kHalf) return f(torch::headeronly::Half{});
    if (t == kBFloat16) return f(torch::headeronly::BFloat16{});
  }
  MK_CHECK(false, op, ": unsupported dtype ", t);
}

// Registration: an op written on medkernels::Tensor, Shape and std::optional<Tensor> is registered through a
// wrapper taking and returning the stable types that TORCH_BOX can unbox (`MK_IMPL(m, "op", fn)`).
template <class T>
struct StableOf {
  using type = T;
};
template <>
struct StableOf<Tensor> {
  using type = STensor;
};
template <>
struct StableOf<std::optional<Tensor>> {
  using type = OptSTensor;
};
template <>
struct StableOf<Shape> {
  using type = std::vector<int64_t>;
};
template <class... T>
struct StableOf<std::tuple<T...>> {
  using type = std::tuple<typename StableOf<T>::type...>;
};
template <class T>
using stable_of_t = typename StableOf<std::decay_t<T>>::type;

template <auto fn>
struct Boxed;
template <class R, class... A, R (*fn)(A...)>
struct Boxed<fn> {
  static stable_of_t<R> call(stable_of_t<A>... a) { return fn(a...); }
};

}  // namespace medkernels

#define MK_IMPL(m, name, fn) (m).impl(name, TORCH_BOX(&::medkernels::Boxed<&(fn)>::call))
