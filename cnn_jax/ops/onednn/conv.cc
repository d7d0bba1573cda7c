// 2-D convolution forward, data gradient and weight gradient on oneDNN, as one XLA FFI custom call.
//
// Layouts are the ones cnn_jax uses everywhere: images NHWC, kernels HWIO. Operands and result share one dtype,
// float32 or bfloat16; bfloat16 runs oneDNN's bf16 kernels, which multiply bf16 values and accumulate in float32,
// rounding to bf16 once at the end. The call's two operands and its result depend on `mode` (G = groups; G = C is
// a depthwise convolution):
//   0 forward          x  (N,H,W,C),   w  (KH,KW,C/G,O) -> y  (N,OH,OW,O)
//   1 data gradient    dy (N,OH,OW,O), w  (KH,KW,C/G,O) -> dx (N,H,W,C)
//   2 weight gradient  x  (N,H,W,C),   dy (N,OH,OW,O)   -> dw (KH,KW,C/G,O)
// A second call, CnnJaxConvFused, runs an inference forward with an epilogue applied by the kernel while the
// output is in cache, instead of by one more pass over memory each (evaluation's BatchNorm as a per-channel
// scale and shift, a residual block's shortcut add, the activation):
//   3 fused forward    x (N,H,W,C), w (KH,KW,C/G,O), scale (O), shift (O) float32 [, residual (N,OH,OW,O)]
//                      -> act(conv(x, w) * scale + shift [+ residual]), act none, ReLU or ReLU6 (oneDNN post-ops)
// A grouped HWIO kernel is oneDNN's 5-D (G, O/G, C/G, KH, KW) in its hwigo layout.
// Activations stay NHWC (oneDNN's AVX-512 kernels read it directly); kernels are reordered to and from
// the blocked layout each primitive prefers, which costs little next to the convolution itself. bf16 depthwise
// modes that oneDNN has no bf16 depthwise kernel for run on its f32 ones instead (see MakePlan).
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
  int64_t residual = 0, activation = 0;  // mode 3's epilogue: a residual operand; 0 none, 1 ReLU, 2 ReLU6
  auto key() const {
    return std::tie(mode, type, n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, groups, residual,
                    activation);
  }
  bool operator<(const Geometry& other) const { return key() < other.key(); }

  memory::desc images() const { return {{n, c, h, w}, type, tag::nhwc}; }
  memory::desc outputs() const { return {{n, o, oh, ow}, type, tag::nhwc}; }
  memory::desc residuals() const { return outputs(); }  // in the call's dtype even where the kernel computes in f32
  memory::desc channels() const { return {{1, o, 1, 1}, memory::data_type::f32, tag::nchw}; }  // per channel
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

// Mode 3: the scale and shift (binary ops broadcast per channel), the residual (a binary add of a same-shaped
// tensor) and the activation as post-ops. `residual` describes the residual operand as the call holds it.
dnnl::convolution_forward::primitive_desc FusedDesc(const Geometry& g, const memory::desc& residual) {
  dnnl::post_ops post_ops;
  post_ops.append_binary(dnnl::algorithm::binary_mul, g.channels());
  post_ops.append_binary(dnnl::algorithm::binary_add, g.channels());
  if (g.residual) post_ops.append_binary(dnnl::algorithm::binary_add, residual);
  if (g.activation == 1) post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  if (g.activation == 2) post_ops.append_eltwise(dnnl::algorithm::eltwise_clip, 0.f, 6.f);
  auto attr = Attributes();
  attr.set_post_ops(post_ops);
  return {Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, g.images(),
          g.any_weights(), g.outputs(), g.strides(), g.dilates(), g.pad_l(), g.pad_r(), attr};
}

// A primitive with the scratchpad it needs.
struct Step {
  dnnl::primitive primitive;
  memory::desc scratchpad;
};

// One operand or the result of a cached convolution: its memory as XLA holds it (`user`: NHWC or HWIO, the call's
// dtype) and as the primitive wants it (a blocked kernel layout, or float32 for a bf16 call run on f32 kernels),
// with the reorder between the two where they differ (user -> primitive for operands, back for the result).
struct Operand {
  memory::desc user, primitive;
  bool convert = false;
  Step reorder;
};

// One cached convolution: the primitive, which oneDNN implementation it is, and its three memories in the call's
// order (a, b, out).
struct Plan {
  Step conv;
  std::string implementation;  // e.g. "brg_conv_fwd:avx512_core"
  Operand a, b, out;
};

Step Reorder(const memory::desc& from, const memory::desc& to) {
  dnnl::reorder::primitive_desc pd(Engine(), from, Engine(), to, Attributes());
  return {dnnl::reorder(pd), pd.scratchpad_desc()};
}

Operand Connect(const memory::desc& user, const memory::desc& primitive, bool result) {
  Operand operand{user, primitive, user != primitive, {}};
  if (operand.convert) operand.reorder = result ? Reorder(primitive, user) : Reorder(user, primitive);
  return operand;
}

// The primitive for geometry `c` (the computing dtype), its memories connected to the user's geometry `g`.
std::unique_ptr<Plan> MakePlanAs(const Geometry& g, const Geometry& c) {
  auto plan = std::make_unique<Plan>();
  if (c.mode == 3) {
    auto fused = FusedDesc(c, g.residuals());
    plan->conv = {dnnl::convolution_forward(fused), fused.scratchpad_desc()};
    plan->implementation = fused.impl_info_str();
    plan->a = Connect(g.images(), fused.src_desc(), false);
    plan->b = Connect(g.user_weights(), fused.weights_desc(), false);
    plan->out = Connect(g.outputs(), fused.dst_desc(), true);
    return plan;
  }
  auto forward = ForwardDesc(c);
  if (c.mode == 0) {
    plan->conv = {dnnl::convolution_forward(forward), forward.scratchpad_desc()};
    plan->implementation = forward.impl_info_str();
    plan->a = Connect(g.images(), forward.src_desc(), false);
    plan->b = Connect(g.user_weights(), forward.weights_desc(), false);
    plan->out = Connect(g.outputs(), forward.dst_desc(), true);
  } else if (c.mode == 1) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, c.images(), c.any_weights(), c.outputs(), c.strides(),
        c.dilates(), c.pad_l(), c.pad_r(), forward, Attributes());
    plan->conv = {dnnl::convolution_backward_data(pd), pd.scratchpad_desc()};
    plan->implementation = pd.impl_info_str();
    plan->a = Connect(g.outputs(), pd.diff_dst_desc(), false);
    plan->b = Connect(g.user_weights(), pd.weights_desc(), false);
    plan->out = Connect(g.images(), pd.diff_src_desc(), true);
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, c.images(), c.any_weights(), c.outputs(), c.strides(),
        c.dilates(), c.pad_l(), c.pad_r(), forward, Attributes());
    plan->conv = {dnnl::convolution_backward_weights(pd), pd.scratchpad_desc()};
    plan->implementation = pd.impl_info_str();
    plan->a = Connect(g.images(), pd.src_desc(), false);
    plan->b = Connect(g.outputs(), pd.diff_dst_desc(), false);
    plan->out = Connect(g.user_weights(), pd.diff_weights_desc(), true);
  }
  return plan;
}

// oneDNN 3.2 has bf16 depthwise kernels only for some geometries (not strided gradients, for one); elsewhere it
// serves bf16 depthwise convolutions from generic grouped kernels that run 3-40x slower than its f32 depthwise ones.
// Those run as f32 on the bf16 operands, converted (exactly) to f32 and the result rounded to bf16 once: the same
// numbers as a bf16 kernel with f32 accumulation.
std::unique_ptr<Plan> MakePlan(const Geometry& g) {
  auto plan = MakePlanAs(g, g);
  bool depthwise = g.groups > 1 && g.c == g.groups;
  if (g.type == memory::data_type::bf16 && depthwise && plan->implementation.find("dw") == std::string::npos) {
    Geometry f32 = g;
    f32.type = memory::data_type::f32;
    plan = MakePlanAs(g, f32);
    plan->implementation += " (f32 on bf16 operands)";
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

// The primitive's view of a user buffer: the buffer itself, or a fresh one, filled by the reorder for an operand.
memory Bind(const Operand& operand, void* data, bool result) {
  memory user(operand.user, Engine(), data);
  if (!operand.convert) return user;
  memory converted(operand.primitive, Engine());
  if (!result) Execute(operand.reorder, {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, converted}});
  return converted;
}

// Runs geometry g on the call's buffers; `scale`, `shift` and `residual` only in mode 3 (`residual` null without
// one).
void Run(const Geometry& g, void* a, void* b, void* out, void* scale = nullptr, void* shift = nullptr,
         void* residual = nullptr) {
  static std::mutex running;
  std::lock_guard<std::mutex> lock(running);
  const Plan& plan = GetPlan(g);
  memory ma = Bind(plan.a, a, false), mb = Bind(plan.b, b, false), mout = Bind(plan.out, out, true);
  static const int kArgs[4][3] = {{DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST},
                                  {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC},
                                  {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS},
                                  {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST}};
  const int* args = kArgs[g.mode];
  std::unordered_map<int, memory> bound{{args[0], ma}, {args[1], mb}, {args[2], mout}};
  if (g.mode == 3) {
    bound.insert({DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, memory(g.channels(), Engine(), scale)});
    bound.insert({DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1, memory(g.channels(), Engine(), shift)});
  }
  if (residual) {
    bound.insert({DNNL_ARG_ATTR_MULTIPLE_POST_OP(2) | DNNL_ARG_SRC_1, memory(g.residuals(), Engine(), residual)});
  }
  Execute(plan.conv, std::move(bound));
  if (plan.out.convert) {
    Execute(plan.out.reorder, {{DNNL_ARG_FROM, mout}, {DNNL_ARG_TO, memory(plan.out.user, Engine(), out)}});
  }
  Stream().wait();
}

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string text = "(";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + ")";
}

ffi::Error Invalid(const std::string& target, const std::string& problem) {
  return ffi::Error::InvalidArgument(target + ": " + problem);
}

// The geometry of a call in `mode` from its images (NHWC), kernel (HWIO) and outputs (NHWC) dimensions, its
// attributes and dtype (float32 or bfloat16), or the error that names what does not fit.
ffi::ErrorOr<Geometry> GeometryOf(const std::string& target, int64_t mode, ffi::DataType dtype,
                                  ffi::Span<const int64_t> images, ffi::Span<const int64_t> kernel,
                                  ffi::Span<const int64_t> outputs, ffi::Span<const int64_t> strides,
                                  ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation, int64_t groups) {
  if (strides.size() != 2 || padding.size() != 4 || dilation.size() != 2 || groups < 1) {
    return ffi::Unexpected(Invalid(target, "bad geometry attributes"));
  }
  if (dtype != ffi::F32 && dtype != ffi::BF16) {
    return ffi::Unexpected(Invalid(target, "images, kernel and result must be float32 or bfloat16"));
  }
  if (images.size() != 4 || kernel.size() != 4 || outputs.size() != 4) {
    return ffi::Unexpected(Invalid(target, "operands must be rank 4 (NHWC images, HWIO kernel)"));
  }
  if (kernel[2] * groups != images[3] || kernel[3] % groups) {
    return ffi::Unexpected(Invalid(target, "kernel " + Shape(kernel) + " does not fit images " + Shape(images) +
                                               " in " + std::to_string(groups) + " groups"));
  }
  return Geometry{images[0], images[1], images[2], images[3], kernel[0], kernel[1], kernel[3], outputs[1],
                  outputs[2], strides[0], strides[1], padding[0], padding[1], padding[2], padding[3], dilation[0],
                  dilation[1], groups, mode, dtype == ffi::BF16 ? memory::data_type::bf16 : memory::data_type::f32};
}

// Runs g, turning a oneDNN failure into an error that names the target, mode and shapes.
template <typename... Buffers>
ffi::Error RunOrError(const std::string& target, const Geometry& g, Buffers... buffers) {
  try {
    Run(g, buffers...);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(target + ": oneDNN failed (status " + std::to_string(e.status) + ") in mode " +
                                std::to_string(g.mode) + " for images (" + std::to_string(g.n) + ", " +
                                std::to_string(g.h) + ", " + std::to_string(g.w) + ", " + std::to_string(g.c) +
                                "), " + std::to_string(g.o) + " output channels: " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t mode,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                ffi::Span<const int64_t> dilation, int64_t groups) {
  const std::string target = "cnn_jax_conv";
  if (mode < 0 || mode > 2) return Invalid(target, "bad mode " + std::to_string(mode));
  auto dtype = a.element_type();
  if (b.element_type() != dtype || out->element_type() != dtype) {
    return Invalid(target, "operands and result must all be float32 or all bfloat16");
  }
  auto images = mode == 1 ? out->dimensions() : a.dimensions();
  auto kernel = mode == 2 ? out->dimensions() : b.dimensions();
  auto outputs = mode == 0 ? out->dimensions() : mode == 1 ? a.dimensions() : b.dimensions();
  auto g = GeometryOf(target, mode, dtype, images, kernel, outputs, strides, padding, dilation, groups);
  if (!g) return g.error();
  return RunOrError(target, *g, a.untyped_data(), b.untyped_data(), out->untyped_data());
}

// Mode 3: `rest` holds the residual when `residual` is set.
ffi::Error ConvFused(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                     ffi::RemainingArgs rest,
                     ffi::Result<ffi::AnyBuffer> out,
                     ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                     ffi::Span<const int64_t> dilation, int64_t groups, int64_t residual, int64_t activation) {
  const std::string target = "cnn_jax_conv_fused";
  if (activation < 0 || activation > 2 || rest.size() != static_cast<size_t>(residual ? 1 : 0)) {
    return Invalid(target, "bad epilogue or operand count");
  }
  auto dtype = x.element_type();
  if (w.element_type() != dtype || out->element_type() != dtype || scale.element_type() != ffi::F32 ||
      shift.element_type() != ffi::F32) {
    return Invalid(target, "x, w and the result must be all float32 or all bfloat16, the scale and shift float32");
  }
  auto g = GeometryOf(target, 3, dtype, x.dimensions(), w.dimensions(), out->dimensions(), strides, padding,
                      dilation, groups);
  if (!g) return g.error();
  for (auto vector : {scale.dimensions(), shift.dimensions()}) {
    if (vector.size() != 1 || vector[0] != g->o) return Invalid(target, "scale and shift must be (output channels,)");
  }
  g->residual = residual;
  g->activation = activation;
  void* residual_data = nullptr;
  if (residual) {
    auto r = rest.get<ffi::AnyBuffer>(0);
    if (!r.has_value() || r->element_type() != dtype || r->dimensions().size() != 4) {
      return Invalid(target, "the residual must be shaped and typed as the result");
    }
    residual_data = r->untyped_data();
  }
  return RunOrError(target, *g, x.untyped_data(), w.untyped_data(), out->untyped_data(), scale.untyped_data(),
                    shift.untyped_data(), residual_data);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxConvFused, ConvFused,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<int64_t>("residual")
                                  .Attr<int64_t>("activation"));

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
// `dims` holds n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, groups, and for mode 3 residual and
// activation; `bf16` picks the dtype.
extern "C" const char* CnnJaxConvImplementation(int64_t mode, const int64_t* d, int64_t bf16) {
  thread_local std::string name;
  Geometry g{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15],
             d[16], d[17], mode, bf16 ? memory::data_type::bf16 : memory::data_type::f32,
             mode == 3 ? d[18] : 0, mode == 3 ? d[19] : 0};
  try {
    name = GetPlan(g).implementation;
  } catch (const dnnl::error& e) {
    name = std::string("error: ") + e.what();
  }
  return name.c_str();
}
