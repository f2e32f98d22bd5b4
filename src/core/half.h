// half.h — IEEE half precision and llama.cpp's Q8_0 block: the two encodings that safetensors and
// GGUF files, and the packed inference weights (core/packed.h), share.
#pragma once
#include <cstdint>

namespace moe {

uint16_t float_to_half(float f);  // round to nearest even; NaN stays NaN, overflow goes to infinity
float half_to_float(uint16_t h);  // exact

// Q8_0: 32 values as int8 q with one fp16 scale d, value = q·d. llama.cpp's quantize_row_q8_0_ref:
// d = max|x| / 127, q = round(x / d) (ties away from zero); the scale is stored rounded to fp16.
constexpr int kQ8Block = 32;
uint16_t quantize_q8_0_block(const float* x, int8_t* q);  // returns d in fp16

}  // namespace moe
