// hf_import.h — `moe import HF_DIR --out DIR`: a Hugging Face model folder (config.json, one
// model.safetensors or shards listed by model.safetensors.index.json; F32, F16 or BF16) read into a
// run folder that every command of moe.cpp takes (docs/INTEROP.md).
//
// The shards are memory-mapped and each tensor converted straight into the model's parameter, their
// pages given back as they are read; the model's gradient buffers are never written (core/tensor.h: a
// large new tensor is an untouched zero mapping), so the import holds the model once, in fp32.
// Every tensor is checked against what config.json implies (name, shape), every tensor of the files
// must be used, and an index entry must name a file that holds it; the run folder is written whole
// under a temporary name and renamed, so a failed import leaves nothing that looks complete.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/hf.h"

namespace moe {

struct ImportSummary {
  HfArch arch;
  ModelConfig model;
  int64_t params = 0;
  std::vector<std::string> shards;     // the safetensors files read
  std::vector<std::string> tokenizer;  // the tokenizer files copied (tokenizer.model, tokenizer.json, ...)
};

ImportSummary import_hf(const std::string& hf_dir, const std::string& out);

// The files of an HF folder that describe its tokenizer and chat template, copied by import and export.
extern const std::vector<std::string> kHfTokenizerFiles;

}  // namespace moe
