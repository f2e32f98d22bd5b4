// expr.h — the arithmetic of a sweep's derived keys (lab/sweep.h): numbers, names (config keys such as
// model.num_local_experts, or sweep variables such as G), + - * / % ^, parentheses, and the functions
// min, max, pow, sqrt, log, log2, log10, exp, abs, floor, ceil, round.
//
//   "model.moe_intermediate_size" = "1024 / G"
//   "model.num_experts_per_tok"   = "min(2, model.num_local_experts)"
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace moe {

// The value of `text`; `lookup` gives each name's value (nullopt: unknown). Throws moe::Error naming
// the problem and its place in the text.
double eval_expr(const std::string& text, const std::function<std::optional<double>(const std::string&)>& lookup);
// The names `text` refers to (function names left out), in order of appearance, each once.
std::vector<std::string> expr_names(const std::string& text);

}  // namespace moe
