// libFuzzer target: the run-config readers, TOML (what `--config` reads) and JSON (a checkpoint's
// config.json), with validation. The first byte picks the reader. Any input must give a config or a
// moe::Error; another exception, a crash or a sanitizer report is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "train/run_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] & 1)
      moe::run_config_from_json(text, "fuzz input");
    else
      moe::parse_run_config_toml(text, "fuzz input");
  } catch (const moe::Error&) {
  }
  return 0;
}
