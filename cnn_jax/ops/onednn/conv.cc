// 2-D convolution forward, data gradient and weight gradient on oneDNN, as one XLA FFI custom call.
//
// Layouts are the ones cnn_jax uses everywhere: images NHWC, kernels HWIO. Operands and result share one dtype,
// float32 or bfloat16; bfloat16 runs oneDNN's bf16 kernels, which multiply bf16 values and accumulate in float32,
// rounding to bf16 once at the end. The call's two operands and its result depend on `mode` (G = groups; G = C is
// a depthwise convolution):
//   0 forward          x  (N,H,W,C),   w  (KH,KW,C/G,O) -> y  (N,OH,OW,O)
//   1 data gradient    dy (N,OH,OW,O), w  (KH,KW,C/G,O) -> dx (N,H,W,C)
//   2 weight gradient  x  (N,H,W,C),   dy (N,OH,OW,O)   -> dw (KH,KW,C/G,O)
// A grouped HWIO kernel is oneDNN's 5-D (G, O/G, C/G, KH, KW) in its hwigo layout.
// Activations stay NHWC (oneDNN's AVX-512 kernels read it directly); kernels are reordered to and from
// the blocked layout each primitive prefers, which costs little next to the convolution itself.
// Primitives are built once per shape and cached; the oneDNN primitive cache sits beneath.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow;
  int64_t sh, sw, pt, pb, pl, pr, dh, dw;
  int64_t groups, mode;
  memory::data_type type;  // of both operands and the result: f32 or bf16
  auto key() const {
    return std::tie(mode, type, n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, groups);
  }
  bool operator<(const Geometry& other) const { return key() < other.key(); }

  memory::desc images() const { return {{n, c, h, w}, type, tag::nhwc}; }
  memory::desc outputs() const { return {{n, o, oh, ow}, type, tag::nhwc}; }
  memory::dims weight_dims() const {
    return groups == 1 ? memory::dims{o, c, kh, kw} : memory::dims{groups, o / groups, c / groups, kh, kw};
  }
  memory::desc user_weights() const {
    return {weight_dims(), type, groups == 1 ? tag::hwio : tag::hwigo};
  }
  memory::desc any_weights() const { return {weight_dims(), type, tag::any}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims dilates() const { return {dh - 1, dw - 1}; }  // oneDNN counts dilation from 0
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static dnnl::stream stream(Engine());  // used under Run's lock only
  return stream;
}

// Scratchpads are user-managed: oneDNN's library-managed one belongs to the thread that built the primitive,
// and XLA calls us from whichever thread it likes.
dnnl::primitive_attr Attributes() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.images(),
          g.any_weights(), g.outputs(), g.strides(), g.dilates(), g.pad_l(), g.pad_r(), Attributes()};
}

// A primitive with the scratchpad it needs.
struct Step {
  dnnl::primitive primitive;
  memory::desc scratchpad;
};

// One cached convolution with the kernel layout it wants and the reorder between that and HWIO.
struct Plan {
  Step conv;
  std::string implementation;  // e.g. "brg_conv_fwd:avx512_core"
  memory::desc weights;        // the convolution's kernel layout
  bool reorder = false;        // whether it differs from HWIO
  Step to_primitive;           // HWIO -> weights (modes 0, 1)
  Step to_user;                // weights -> HWIO (mode 2)
};

template <typename Primitive>
void SetConv(Plan& plan, const typename Primitive::primitive_desc& pd, const memory::desc& weights) {
  plan.conv = {Primitive(pd), pd.scratchpad_desc()};
  plan.implementation = pd.impl_info_str();
  plan.weights = weights;
}

Step Reorder(const memory::desc& from, const memory::desc& to) {
  dnnl::reorder::primitive_desc pd(Engine(), from, Engine(), to, Attributes());
  return {dnnl::reorder(pd), pd.scratchpad_desc()};
}

std::unique_ptr<Plan> MakePlan(const Geometry& g) {
  auto plan = std::make_unique<Plan>();
  auto forward = ForwardDesc(g);
  if (g.mode == 0) {
    SetConv<dnnl::convolution_forward>(*plan, forward, forward.weights_desc());
  } else if (g.mode == 1) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.images(), g.any_weights(), g.outputs(), g.strides(),
        g.dilates(), g.pad_l(), g.pad_r(), forward, Attributes());
    SetConv<dnnl::convolution_backward_data>(*plan, pd, pd.weights_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.images(), g.any_weights(), g.outputs(), g.strides(),
        g.dilates(), g.pad_l(), g.pad_r(), forward, Attributes());
    SetConv<dnnl::convolution_backward_weights>(*plan, pd, pd.diff_weights_desc());
  }
  plan->reorder = plan->weights != g.user_weights();
  if (plan->reorder) {
    if (g.mode == 2) {
      plan->to_user = Reorder(plan->weights, g.user_weights());
    } else {
      plan->to_primitive = Reorder(g.user_weights(), plan->weights);
    }
  }
  return plan;
}

const Plan& GetPlan(const Geometry& g) {
  static std::mutex mutex;
  static std::map<Geometry, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g];
  if (!plan) plan = MakePlan(g);
  return *plan;
}

// Runs a step with its scratchpad carved from one buffer that grows to the largest need. Steps run one at a
// time: each already spreads over every core with OpenMP, so running two at once would only oversubscribe.
void Execute(const Step& step, std::unordered_map<int, memory> args) {
  static memory buffer;
  static size_t capacity = 0;
  auto& engine = Engine();
  size_t need = step.scratchpad.get_size();
  if (need > capacity) {
    buffer = memory({{static_cast<memory::dim>(need)}, memory::data_type::u8, tag::a}, engine);
    capacity = need;
  }
  if (need) args.insert({DNNL_ARG_SCRATCHPAD, memory(step.scratchpad, engine, buffer.get_data_handle())});
  step.primitive.execute(Stream(), args);
}

void Run(const Geometry& g, void* a, void* b, void* out) {
  static std::mutex running;
  std::lock_guard<std::mutex> lock(running);
  const Plan& plan = GetPlan(g);
  auto& engine = Engine();
  if (g.mode == 0 || g.mode == 1) {
    memory kernel(g.user_weights(), engine, b);
    if (plan.reorder) {
      memory blocked(plan.weights, engine);
      Execute(plan.to_primitive, {{DNNL_ARG_FROM, kernel}, {DNNL_ARG_TO, blocked}});
      kernel = blocked;
    }
    if (g.mode == 0) {
      Execute(plan.conv, {{DNNL_ARG_SRC, memory(g.images(), engine, a)},
                          {DNNL_ARG_WEIGHTS, kernel},
                          {DNNL_ARG_DST, memory(g.outputs(), engine, out)}});
    } else {
      Execute(plan.conv, {{DNNL_ARG_DIFF_DST, memory(g.outputs(), engine, a)},
                          {DNNL_ARG_WEIGHTS, kernel},
                          {DNNL_ARG_DIFF_SRC, memory(g.images(), engine, out)}});
    }
  } else {
    memory user(g.user_weights(), engine, out);
    memory kernel = plan.reorder ? memory(plan.weights, engine) : user;
    Execute(plan.conv, {{DNNL_ARG_SRC, memory(g.images(), engine, a)},
                        {DNNL_ARG_DIFF_DST, memory(g.outputs(), engine, b)},
                        {DNNL_ARG_DIFF_WEIGHTS, kernel}});
    if (plan.reorder) Execute(plan.to_user, {{DNNL_ARG_FROM, kernel}, {DNNL_ARG_TO, user}});
  }
  Stream().wait();
}

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string text = "(";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + ")";
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t mode,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                ffi::Span<const int64_t> dilation, int64_t groups) {
  if (mode < 0 || mode > 2 || strides.size() != 2 || padding.size() != 4 || dilation.size() != 2 || groups < 1) {
    return ffi::Error::InvalidArgument("cnn_jax_conv: bad mode or geometry attributes");
  }
  auto dtype = a.element_type();
  if ((dtype != ffi::F32 && dtype != ffi::BF16) || b.element_type() != dtype || out->element_type() != dtype) {
    return ffi::Error::InvalidArgument("cnn_jax_conv: operands and result must all be float32 or all bfloat16");
  }
  auto images = mode == 1 ? out->dimensions() : a.dimensions();
  auto kernel = mode == 2 ? out->dimensions() : b.dimensions();
  auto outputs = mode == 0 ? out->dimensions() : mode == 1 ? a.dimensions() : b.dimensions();
  if (images.size() != 4 || kernel.size() != 4 || outputs.size() != 4) {
    return ffi::Error::InvalidArgument("cnn_jax_conv: operands must be rank 4 (NHWC images, HWIO kernel)");
  }
  if (kernel[2] * groups != images[3] || kernel[3] % groups) {
    return ffi::Error::InvalidArgument("cnn_jax_conv: kernel " + Shape(kernel) + " does not fit images " +
                                       Shape(images) + " in " + std::to_string(groups) + " groups");
  }
  Geometry g{images[0], images[1], images[2], images[3], kernel[0], kernel[1], kernel[3], outputs[1], outputs[2],
             strides[0], strides[1], padding[0], padding[1], padding[2], padding[3], dilation[0], dilation[1],
             groups, mode, dtype == ffi::BF16 ? memory::data_type::bf16 : memory::data_type::f32};
  try {
    Run(g, a.untyped_data(), b.untyped_data(), out->untyped_data());
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal("cnn_jax_conv: oneDNN failed (status " + std::to_string(e.status) + ") in mode " +
                                std::to_string(mode) + " for images " + Shape(images) + ", kernel " + Shape(kernel) +
                                ", outputs " + Shape(outputs) + ": " + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("mode")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups"));

// Which oneDNN implementation serves a geometry (e.g. "brg_conv_fwd:avx512_core"), for benchmarks and tests.
// `dims` holds n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, groups; `bf16` picks the dtype.
extern "C" const char* CnnJaxConvImplementation(int64_t mode, const int64_t* d, int64_t bf16) {
  thread_local std::string name;
  Geometry g{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15],
             d[16], d[17], mode, bf16 ? memory::data_type::bf16 : memory::data_type::f32};
  try {
    name = GetPlan(g).implementation;
  } catch (const dnnl::error& e) {
    name = std::string("error: ") + e.what();
  }
  return name.c_str();
}
