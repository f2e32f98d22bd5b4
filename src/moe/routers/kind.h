// kind.h — the router kinds by name (docs/MECHANISMS.md §2). Each has a class in routers.h, a file of
// its own, and its line in the table of router.cpp; nothing outside src/moe/routers/ names one.
#pragma once
#include <array>

#include "core/enum_names.h"

namespace moe {

enum class RouterKind { topk_softmax, softmax_topk, noisy_topk, sigmoid_bias, hash, base, sbase, reinforce, expert_choice };
template <>
struct EnumNames<RouterKind> {
  static constexpr const char* what = "router";
  static constexpr std::array<const char*, 9> names = {"topk_softmax", "softmax_topk", "noisy_topk",
                                                       "sigmoid_bias", "hash",         "base",
                                                       "sbase",        "reinforce",    "expert_choice"};
};

// A layer's router unless its config says otherwise: Mixtral's.
constexpr RouterKind kDefaultRouter = RouterKind::topk_softmax;

}  // namespace moe
