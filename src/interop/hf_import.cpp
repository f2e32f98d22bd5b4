#include "interop/hf_import.h"

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "train/checkpoint.h"

namespace moe {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::vector<std::string> kHfTokenizerFiles = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                                    "special_tokens_map.json", "generation_config.json"};

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// The safetensors files of an HF folder, mapped, and where each tensor is.
struct Shards {
  std::vector<std::string> files;
  std::vector<std::unique_ptr<MappedSafetensors>> mapped;
  std::map<std::string, std::pair<size_t, const SafetensorsEntry*>> where;  // tensor → (file, entry)

  explicit Shards(const std::string& dir) {
    const std::string index = dir + "/model.safetensors.index.json";
    std::map<std::string, std::string> weight_map;
    if (fs::exists(index)) {
      const json j = json::parse(read_file(index, ""), nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail(index + ": not a safetensors index (needs a \"weight_map\" object of tensor name to file); the file is damaged");
      std::set<std::string> names;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it->is_string() || it->get<std::string>().find('/') != std::string::npos)
          fail(index + ": weight_map entry '" + it.key() + "' must name a file in the folder (got " + it->dump() + ")");
        weight_map[it.key()] = it->get<std::string>();
        names.insert(it->get<std::string>());
      }
      files.assign(names.begin(), names.end());
    } else if (fs::exists(dir + "/model.safetensors")) {
      files = {"model.safetensors"};
    } else {
      fail(dir + " has neither model.safetensors nor model.safetensors.index.json; give a Hugging Face model folder "
           "saved with safetensors (pytorch_model.bin is not read)");
    }
    for (const std::string& f : files) {
      if (!fs::exists(dir + "/" + f)) fail(index + " names " + f + ", which is not in " + dir + "; the download is incomplete");
      mapped.push_back(std::make_unique<MappedSafetensors>(dir + "/" + f));
      for (const auto& [name, e] : mapped.back()->header().tensors) where[name] = {mapped.size() - 1, &e};
    }
    for (const auto& [name, file] : weight_map) {
      auto it = where.find(name);
      if (it == where.end() || files[it->second.first] != file)
        fail(index + ": tensor '" + name + "' is listed in " + file + ", which does not hold it; the index and the shards do not match");
    }
  }
};

}  // namespace

ImportSummary import_hf(const std::string& hf_dir, const std::string& out) {
  if (const std::string held = fs::exists(out) ? describe_run(out) : ""; !held.empty())
    fail("moe import: " + out + " already holds a run (" + held + "); give another --out (nothing was written)");
  const std::string config_path = hf_dir + "/config.json";
  const json hf_config = json::parse(read_file(config_path, "give a Hugging Face model folder"), nullptr, false);
  if (hf_config.is_discarded()) fail(config_path + " is not valid JSON; the file is damaged");
  const HfModel hf = model_from_hf_config(hf_config, config_path);
  ImportSummary summary{hf.arch, hf.model, 0, {}, {}};
  hf.model.check_memory(4.0, 0.0, "import (weights in fp32)");

  const Shards shards(hf_dir);
  summary.shards = shards.files;
  TransformerLM model(hf.model, ParamInit::for_loading);
  std::map<std::string, Tensor*> params;
  for (Param& p : model.params()) params[p.name] = p.value;
  std::map<std::string, size_t> filled;
  std::set<std::string> used;
  for (const HfTensor& t : hf_tensors(hf.model, hf.arch)) {
    auto it = shards.where.find(t.name);
    if (it == shards.where.end())
      fail(hf_dir + ": tensor '" + t.name + "' is missing from the safetensors files, but " + config_path +
           " implies it; the config and the weights do not match");
    const std::string& file = shards.files[it->second.first];
    const SafetensorsEntry& e = *it->second.second;
    if (e.shape != t.shape)
      fail(hf_dir + "/" + file + ": tensor '" + t.name + "' has shape " + shape_text(e.shape) + " but " + config_path +
           " implies " + shape_text(t.shape) + "; the config and the weights do not match");
    for (const HfSpan& s : t.spans) {
      Tensor* p = params.at(s.param);
      MOE_CHECK(s.param_offset + s.count <= p->numel(), "import: span outside " + s.param);
      convert_to_float(e, s.hf_offset, s.count, p->data() + s.param_offset);
      filled[s.param] += s.count;
    }
    shards.mapped[it->second.first]->release(e);
    used.insert(t.name);
  }
  for (const auto& [name, p] : params)
    MOE_CHECK(filled[name] == p->numel(), "import: parameter " + name + " is not covered by the tensor table");
  for (const auto& [name, loc] : shards.where) {
    const bool ignorable = name.find("rotary_emb.inv_freq") != std::string::npos ||
                           (hf.model.tie_word_embeddings && name == "lm_head.weight");
    if (!used.count(name) && !ignorable)
      fail(hf_dir + "/" + shards.files[loc.first] + ": tensor '" + name + "' is not part of the model " + config_path +
           " describes; the config and the weights do not match");
  }
  summary.params = model.num_params();

  RunConfig c;
  c.model = hf.model;
  c.train.out = out;
  // Written whole beside OUT, then renamed into place (OUT is empty, or holds no run: checked above).
  write_folder_atomic(out, "moe import", [&](const std::string& tmp) {
    fs::create_directories(tmp + "/hf");
    write_run_config(tmp, c);
    // The HF files that are not weights (tokenizer, chat template, generation defaults) go to hf/;
    // a sentencepiece tokenizer is also the run's own tokenizer.model.
    write_file_atomic(tmp + "/hf/config.json", hf_config.dump(2) + "\n");
    for (const std::string& f : kHfTokenizerFiles) {
      if (!fs::exists(hf_dir + "/" + f)) continue;
      const std::string bytes = read_file(hf_dir + "/" + f, "");
      write_file_atomic(tmp + "/hf/" + f, bytes);
      if (f == "tokenizer.model") write_file_atomic(tmp + "/tokenizer.model", bytes);
      summary.tokenizer.push_back(f);
    }
    const json provenance = {{"imported_from", fs::absolute(hf_dir).string()},
                             {"architecture", name_of(hf.arch)},
                             {"shards", shards.files},
                             {"params", summary.params}};
    write_file_atomic(tmp + "/import.json", provenance.dump(2) + "\n");
    TrainState st;
    save_checkpoint(tmp, model, nullptr, st, 0, 0);
  });
  return summary;
}

}  // namespace moe
