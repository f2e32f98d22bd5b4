// common.h — what several commands share: thread and checkpoint options, and loading a trained run.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "core/enum_names.h"

#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/run_config.h"

namespace moe::cli {

// --threads N (0 or absent: all cores / OMP_NUM_THREADS).
void add_threads(CLI::App* cmd, int& threads);
void apply_threads(int threads);
// "kjv | fortunes | c-headers | … | file:PATH": the corpora a --corpus option takes.
std::string corpus_choices();
// --allow-nonfinite, for the commands that load a checkpoint.
void add_allow_nonfinite(CLI::App* cmd, bool& flag);

// --flag NAME for an enum: only its names are accepted (a usage error otherwise); the help lists them
// (CLI11 shows the set) and the default.
template <NamedEnum E>
CLI::Option* add_enum_option(CLI::App* cmd, const std::string& flag, E& value, const std::string& help) {
  std::vector<std::string> names(EnumNames<E>::names.begin(), EnumNames<E>::names.end());
  return cmd
      ->add_option_function<std::string>(
          flag, [&value, flag](const std::string& s) { value = parse_enum<E>(s, flag); },
          help + " (default " + name_of(value) + ")")
      ->check(CLI::IsMember(names));
}

}  // namespace moe::cli
