// cmd_report.cpp — `moe report DIR`: one self-contained HTML page for a run or a sweep (lab/report.h).
#include <cstdio>
#include <filesystem>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "core/files.h"
#include "lab/report.h"

namespace moe::cli {

void add_report(CLI::App& app) {
  static std::string dir, out;
  static ReportOptions o;
  static int threads = 0;
  auto* cmd = app.add_subcommand("report", "One self-contained HTML page for a run or a sweep: curves, fitted laws, "
                                           "cost, expert-load heatmaps, routing tables");
  cmd->add_option("dir", dir, "A run folder (train.out) or a sweep folder (moe sweep --out)")->required();
  cmd->add_option("--out", out, "HTML file (default: DIR/report.html)");
  cmd->add_option("--windows", o.windows, "Validation windows for the routing rows")->check(CLI::PositiveNumber);
  cmd->add_option("--figures", o.figures_dir, "Also write each chart as its own SVG file into this folder");
  add_threads(cmd, threads);
  cmd->callback([] {
    apply_threads(threads);
    const std::string html = report_html(dir, o);  // throws before anything is written
    const std::string path = out.empty() ? dir + "/report.html" : out;
    write_file_atomic(path, html);
    std::printf("report: %s (%.0f kB)\n", path.c_str(), static_cast<double>(html.size()) / 1e3);
  });
}

}  // namespace moe::cli
