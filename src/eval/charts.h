// charts.h — figures of the reports, as self-contained SVG.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

// A bar chart of the expert load per layer (uniform load 1/E marked), with the layer's CV, max/mean
// and entropy: one panel per object of `layers` that has a "load" list (the routing metrics of an MoE
// layer, with its "layer" index); other objects are left out, and with none the result is "".
std::string routing_svg(const nlohmann::json& layers, const std::string& title);

// One series of a line chart: points (x, y) drawn as a line, markers, or both; NaN y values leave a gap.
struct ChartSeries {
  std::string name;
  std::vector<double> x, y;
  bool line = true, markers = true, dashed = false;
  int color = -1;  // index into the palette (-1: the series' own index)
};
// A line chart with linear or logarithmic axes, ticks, grid and legend. The SVG scales to its
// container (viewBox), with a white background, for screens and print.
struct LineChart {
  std::string title, xlabel, ylabel;
  bool logx = false, logy = false;
  std::vector<ChartSeries> series;
  int width = 620, height = 320;  // the legend's rows add to the height
};
std::string line_chart_svg(const LineChart& c);

// A heatmap: cells[row][col] (e.g. an expert's load at a training step), colored from white (0) through
// the palette's blue to dark red at `vmax` (0: the largest cell); `reference` (> 0) is marked on the
// color bar (e.g. the uniform load 1/E). x labels the columns (e.g. steps).
struct Heatmap {
  std::string title, xlabel, ylabel;
  std::vector<double> x;
  std::vector<std::vector<double>> cells;
  double vmax = 0.0, reference = 0.0;
  int width = 620, height = 240;
};
std::string heatmap_svg(const Heatmap& h);

// Text for XML and HTML: & < > " as entities.
std::string xml_escape(const std::string& s);

// The palette the charts draw with (colour-blind safe, Paul Tol's "bright").
const std::vector<std::string>& chart_palette();

}  // namespace moe
