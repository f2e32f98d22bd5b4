#include "interop/hf_export.h"

#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "interop/hf_import.h"
#include "train/checkpoint.h"

namespace moe {

namespace fs = std::filesystem;
using json = nlohmann::json;

ExportSummary export_hf(const std::string& ckpt, const std::string& out, ExportDtype dtype, bool allow_nonfinite) {
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)))
    fail("moe export: " + out + " already exists and is not an empty folder; give another --out (nothing was written)");
  const RunConfig cfg = read_checkpoint_config(ckpt);
  const HfArch arch = hf_arch_of(cfg.model);  // refuses what no architecture has, before the load
  LoadedRun run = load_run(ckpt, allow_nonfinite);
  std::map<std::string, const Tensor*> params;
  for (Param& p : run.model->params()) params[p.name] = p.value;
  static constexpr std::array<const char*, 3> st_dtype = {"F32", "BF16", "F16"};
  static constexpr std::array<const char*, 3> torch_dtype = {"float32", "bfloat16", "float16"};
  const std::string dt = st_dtype[static_cast<size_t>(dtype)];
  std::vector<OutTensor> tensors;
  for (const HfTensor& t : hf_tensors(cfg.model, arch)) {
    OutTensor o{t.name, dt, t.shape, nullptr, {}};
    if (dt == "F32" && t.spans.size() == 1 && t.spans[0].param_offset == 0 &&
        t.spans[0].count == params.at(t.spans[0].param)->numel()) {
      o.data = params.at(t.spans[0].param)->data();  // the parameter itself, written without a copy
    } else {
      o.fill = [&params, spans = t.spans](float* dst) {  // empty spans: zeros (a bias the model does not have)
        for (const HfSpan& s : spans)
          std::memcpy(dst + s.hf_offset, params.at(s.param)->data() + s.param_offset, s.count * sizeof(float));
      };
    }
    tensors.push_back(std::move(o));
  }
  json config = hf_config_of(cfg.model, arch);
  config["torch_dtype"] = torch_dtype[static_cast<size_t>(dtype)];

  // Written whole beside OUT, then renamed into place (OUT is absent or empty: checked above).
  write_folder_atomic(out, "moe export", [&](const std::string& tmp) {
    save_safetensors(tmp + "/model.safetensors", tensors,
                     {{"format", "pt"}, {"exported_by", "moe.cpp"}, {"step", std::to_string(run.state.step)}});
    write_file_atomic(tmp + "/config.json", config.dump(2) + "\n");
    // An imported model's own tokenizer files; a model trained here has its sentencepiece model.
    bool tokenizer = false;
    for (const std::string& f : kHfTokenizerFiles)
      if (fs::exists(ckpt + "/hf/" + f)) {
        write_file_atomic(tmp + "/" + f, read_file(ckpt + "/hf/" + f, ""));
        tokenizer = true;
      }
    if (!tokenizer && fs::exists(ckpt + "/tokenizer.model")) {
      write_file_atomic(tmp + "/tokenizer.model", read_file(ckpt + "/tokenizer.model", ""));
      // The sentencepiece BPE of `moe data` (byte fallback, no added prefix), read by transformers' LlamaTokenizer.
      const json tc = {{"tokenizer_class", "LlamaTokenizer"}, {"add_bos_token", false}, {"add_eos_token", false},
                       {"add_prefix_space", false}, {"legacy", false}, {"model_max_length", cfg.model.context()}};
      write_file_atomic(tmp + "/tokenizer_config.json", tc.dump(2) + "\n");
    }
  });
  return {arch, run.model->num_params(), run.state.step};
}

}  // namespace moe
