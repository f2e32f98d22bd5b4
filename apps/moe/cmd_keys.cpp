// cmd_keys.cpp — `moe keys`: every config key with its type, default and meaning (from the one list
// of fields each config struct keeps).
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/moe/commands.h"
#include "train/run_config.h"

namespace moe::cli {
namespace {

// A default as the TOML would write it: floats in %g (0.02, not the double nearest the float).
std::string value_text(const nlohmann::json& v) {
  if (!v.is_number_float()) return v.dump();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v.get<double>());
  return buf;
}

}  // namespace

void add_keys(CLI::App& app) {
  static bool json = false;
  auto* cmd = app.add_subcommand("keys", "Every config key (TOML [model], [model.peer], [train]; --set section.key=value) "
                                         "with its type, default and meaning");
  cmd->add_flag("--json", json, "Print a JSON list of {key, type, default, meaning}");
  cmd->callback([] {
    const nlohmann::json keys = run_config_keys();
    if (json) {
      std::printf("%s\n", keys.dump(1).c_str());
      return;
    }
    size_t wk = 0, wd = 0;
    for (const auto& k : keys) {
      wk = std::max(wk, k["key"].get<std::string>().size());
      wd = std::max(wd, value_text(k["default"]).size());
    }
    for (const auto& k : keys)
      std::printf("%-*s  %-*s  %s (%s)\n", static_cast<int>(wk), k["key"].get<std::string>().c_str(), static_cast<int>(wd),
                  value_text(k["default"]).c_str(), k["meaning"].get<std::string>().c_str(), k["type"].get<std::string>().c_str());
  });
}

}  // namespace moe::cli
