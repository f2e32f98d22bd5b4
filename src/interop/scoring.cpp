#include "interop/scoring.h"

#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"

namespace moe {

std::vector<std::vector<int32_t>> read_token_ids(const std::string& path, int vocab_size) {
  const std::string text = read_file(path, "give a file of whitespace-separated token ids, one sequence per line");
  std::vector<std::vector<int32_t>> out;
  std::istringstream lines(text);
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    std::istringstream words(line);
    std::vector<int32_t> seq;
    std::string w;
    while (words >> w) {
      size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(w, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != w.size())
        fail(path + ":" + std::to_string(n) + ": '" + w + "' is not a token id; the file holds whitespace-separated integers");
      if (v < 0 || v >= vocab_size)
        fail(path + ":" + std::to_string(n) + ": token id " + w + " is outside the model's vocabulary [0, " +
             std::to_string(vocab_size) + ")");
      seq.push_back(static_cast<int32_t>(v));
    }
    if (!seq.empty()) out.push_back(std::move(seq));
  }
  if (out.empty()) fail(path + " holds no token ids; write whitespace-separated integers, one sequence per line");
  return out;
}

static void check_length(const TransformerLM& model, const std::vector<int32_t>& s, size_t i) {
  if (s.size() > static_cast<size_t>(model.cfg.context()))
    fail("sequence " + std::to_string(i + 1) + " has " + std::to_string(s.size()) + " tokens, more than the model's context of " +
         std::to_string(model.cfg.context()) + " (model.context_length); split it");
}

IdsScore score_ids(TransformerLM& model, const std::vector<std::vector<int32_t>>& seqs) {
  IdsScore r;
  double total = 0.0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const std::vector<int32_t>& s = seqs[i];
    check_length(model, s, i);
    if (s.size() < 2) continue;  // nothing to predict
    const int L = static_cast<int>(s.size()) - 1;
    std::vector<int32_t> targets(s.begin() + 1, s.end());
    const double ce = model.forward(s.data(), targets.data(), 1, L, false, 0);
    total += ce * L;
    r.predictions += L;
    ++r.sequences;
  }
  if (r.predictions == 0) fail("every sequence has fewer than 2 tokens: there is nothing to predict");
  r.mean_ce = total / static_cast<double>(r.predictions);
  return r;
}

// numpy's .npy format 1.0: magic, version, header length (uint16 LE), a Python dict literal padded
// with spaces to a multiple of 64 bytes and ended by '\n', then the raw little-endian float32 data.
static void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<const float*>& rows,
                      size_t row_floats) {
  std::string dims;
  for (int64_t s : shape) dims += std::to_string(s) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t prefix = 10;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string head = std::string("\x93NUMPY\x01\x00", 8);
  head += static_cast<char>(header.size() & 0xff);
  head += static_cast<char>(header.size() >> 8);
  AtomicFile f(path);
  f.write(head.data(), head.size());
  f.write(header.data(), header.size());
  for (const float* r : rows) f.write(r, row_floats * sizeof(float));
  f.commit();
}

std::vector<int64_t> write_logits(TransformerLM& model, const std::vector<std::vector<int32_t>>& seqs,
                                  const std::string& path) {
  const bool npy = path.size() > 4 && path.compare(path.size() - 4, 4, ".npy") == 0;
  const bool st = path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0;
  if (!npy && !st) fail("--out " + path + ": name a .npy or .safetensors file");
  const size_t L = seqs[0].size();
  for (size_t i = 0; i < seqs.size(); ++i) {
    check_length(model, seqs[i], i);
    if (seqs[i].size() != L)
      fail("sequence " + std::to_string(i + 1) + " has " + std::to_string(seqs[i].size()) + " tokens and sequence 1 has " +
           std::to_string(L) + "; the logits of several sequences are one (B, L, V) array, so give them one length");
  }
  const int64_t V = model.cfg.vocab_size, B = static_cast<int64_t>(seqs.size());
  std::vector<int64_t> shape = B == 1 ? std::vector<int64_t>{static_cast<int64_t>(L), V}
                                      : std::vector<int64_t>{B, static_cast<int64_t>(L), V};
  Tensor all({B * static_cast<int64_t>(L), V});
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Tensor& z = model.forward_logits(seqs[i].data(), 1, static_cast<int>(L));
    std::memcpy(all.data() + i * L * static_cast<size_t>(V), z.data(), sizeof(float) * z.numel());
  }
  if (npy) {
    write_npy(path, shape, {all.data()}, all.numel());
  } else {
    all.resize(shape);
    save_safetensors(path, {{"logits", &all}}, {{"format", "moe.cpp logits"}});
  }
  return shape;
}

}  // namespace moe
