// charts.h — figures of the reports, as self-contained SVG.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace moe {

// A bar chart of the expert load per layer (uniform load 1/E marked), with the layer's CV, max/mean
// and entropy: one panel per object of `layers` that has a "load" list (the routing metrics of an MoE
// layer, with its "layer" index); other objects are left out, and with none the result is "".
std::string routing_svg(const nlohmann::json& layers, const std::string& title);

}  // namespace moe
