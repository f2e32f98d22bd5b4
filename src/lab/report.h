// report.h — `moe report DIR`: one self-contained HTML page (inline SVG and CSS; no script, font or
// image from anywhere else) for a run folder or a sweep folder.
//
// A run: its training and validation loss curves, a heatmap per sparse layer of each expert's share
// of the load over the training steps, and `moe compare`'s routing row.
// A sweep: its results table; loss against E and against G (per group of the other swept keys) with
// the fitted Clark and Krajewski curves through the points and their coefficients; loss against
// training FLOPs and against wall-clock; tokens/s; every point's validation curve; per point the
// expert-load heatmap of its last sparse layer; and the routing rows of all points.
#pragma once
#include <string>

namespace moe {

struct ReportOptions {
  int windows = 64;         // validation windows for the routing rows
  std::string figures_dir;  // also write each chart there as its own SVG file (NN-title.svg); "": none
};

// The page; throws moe::Error when `dir` holds neither a run (config.json, metrics.jsonl) nor a sweep
// (results.jsonl).
std::string report_html(const std::string& dir, const ReportOptions& o = {});

}  // namespace moe
