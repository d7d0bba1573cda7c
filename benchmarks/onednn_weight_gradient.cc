// oneDNN's weight-gradient convolution on its own, without XLA: float32 against bfloat16 on resnet20's shapes,
// with the settings cnn_jax's kernel uses (NHWC activations, a user scratchpad, the kernel layout oneDNN picks).
// Prints the fastest, median and slowest of 30 calls, to tell a slow kernel from threads that wait at barriers
// (BENCHMARKS.md, "bfloat16 on oneDNN"). Build and run against the pinned wheels' oneDNN (here in .venv):
//
//   g++ -O2 -std=c++17 -I.venv/include benchmarks/onednn_weight_gradient.cc -o /tmp/onednn_weight_gradient \
//       -L.venv/lib -ldnnl -Wl,-rpath,$PWD/.venv/lib && /tmp/onednn_weight_gradient

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

using dnnl::memory;
using tag = memory::format_tag;

// Fills a plain (NHWC) buffer with uniform values in [-1, 1), as float32 or as bf16 (the top half of the float).
void Fill(memory& m, memory::data_type type, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  size_t count = m.get_desc().get_size() / (type == memory::data_type::bf16 ? 2 : 4);
  for (size_t i = 0; i < count; ++i) {
    float value = uniform(rng);
    if (type == memory::data_type::f32) {
      static_cast<float*>(m.get_data_handle())[i] = value;
    } else {
      uint32_t bits;
      std::memcpy(&bits, &value, 4);
      static_cast<uint16_t*>(m.get_data_handle())[i] = static_cast<uint16_t>(bits >> 16);
    }
  }
}

// One 3x3 convolution (padding 1) of n x c x h x h images to o channels at stride s.
void Measure(int64_t n, int64_t c, int64_t h, int64_t o, int64_t s, memory::data_type type) {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  int64_t oh = (h + 2 - 3) / s + 1;
  memory::desc src({n, c, h, h}, type, tag::nhwc), dst({n, o, oh, oh}, type, tag::nhwc);
  memory::desc weights({o, c, 3, 3}, type, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training,
                                                    dnnl::algorithm::convolution_direct, src, weights, dst, {s, s},
                                                    {1, 1}, {1, 1}, attr);
  dnnl::convolution_backward_weights::primitive_desc pd(engine, dnnl::algorithm::convolution_direct, src, weights,
                                                        dst, {s, s}, {1, 1}, {1, 1}, forward, attr);
  memory x(src, engine), dy(dst, engine), dw(pd.diff_weights_desc(), engine), pad(pd.scratchpad_desc(), engine);
  std::mt19937 rng(0);
  Fill(x, type, rng);
  Fill(dy, type, rng);
  dnnl::convolution_backward_weights conv(pd);
  std::vector<double> times;
  for (int i = 0; i <= 30; ++i) {
    auto start = std::chrono::steady_clock::now();
    conv.execute(stream, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw},
                          {DNNL_ARG_SCRATCHPAD, pad}});
    stream.wait();
    if (i) times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  std::printf("%ldx%ldx%ldx%ld -> %ld, stride %ld, %s: %s  fastest %.2f  median %.2f  slowest %.2f ms\n", n, h, h, c,
              o, s, type == memory::data_type::bf16 ? "bf16" : "f32 ", pd.impl_info_str(), times.front(),
              times[times.size() / 2], times.back());
}

int main() {
  const int64_t shapes[][5] = {{128, 16, 32, 32, 2}, {128, 32, 16, 64, 2}, {128, 64, 8, 64, 1}};
  for (const auto& d : shapes) {
    for (auto type : {memory::data_type::f32, memory::data_type::bf16}) Measure(d[0], d[1], d[2], d[3], d[4], type);
  }
}
