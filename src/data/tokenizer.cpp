#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "data/bpe_tokenizer.h"

// Exported by libsentencepiece but not declared in its public headers: its log threshold, raised so
// that its INFO lines ("Running command: ...") stay off the user's terminal; failures come back as a
// status and are reported in our words.
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}

namespace fs = std::filesystem;

namespace moe {

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::~Tokenizer() = default;

void Tokenizer::train(const std::string& text, int vocab_size, const std::string& model_path) {
  // sentencepiece trains from a file of sentences: write the text to a temporary file beside the model.
  const std::string tmp = model_path + ".input.txt";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
  }
  std::string prefix = model_path.substr(0, model_path.size() - std::string(".model").size());
  auto run = [&](bool hard_limit) {
    std::ostringstream args;
    args << "--input=" << tmp << " --model_prefix=" << prefix << " --vocab_size=" << vocab_size
         << " --model_type=bpe --byte_fallback=true --character_coverage=1.0 --split_digits=true"
         << " --normalization_rule_name=identity --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true"
         << " --input_sentence_size=200000 --shuffle_input_sentence=false --num_threads=2"
         << " --max_sentence_length=8192 --bos_id=-1 --eos_id=-1 --unk_id=0 --pad_id=-1 --minloglevel=2"
         << " --hard_vocab_limit=" << (hard_limit ? "true" : "false");
    return sentencepiece::SentencePieceTrainer::Train(args.str());
  };
  sentencepiece::logging::SetMinLogLevel(2);
  auto status = run(true);
  int reachable = 0;  // when the text is too small for vocab_size: the vocabulary it does give
  if (!status.ok() && run(false).ok()) {
    Tokenizer t;
    t.load(model_path);
    reachable = t.vocab_size();
    fs::remove(model_path);
  }
  fs::remove(tmp);
  fs::remove(prefix + ".vocab");
  if (reachable > 0)
    fail("the training text (" + std::to_string(text.size()) + " bytes) gives a BPE vocabulary of at most " +
         std::to_string(reachable) + " tokens, fewer than --vocab-size " + std::to_string(vocab_size) +
         "; use --vocab-size " + std::to_string(reachable) + " (or less) or a bigger corpus");
  if (!status.ok()) fail("tokenizer training on " + std::to_string(text.size()) + " bytes of text failed (sentencepiece says: " +
                         status.ToString() + "); check the corpus is text");
}

void Tokenizer::load(const std::string& model_path) {
  auto status = sp_->Load(model_path);
  if (!status.ok()) fail("cannot load tokenizer " + model_path + ": " + status.ToString() + "; run `moe data` first");
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  sp_->Encode(text, &ids);
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &out);
  return out;
}

std::string Tokenizer::piece(int32_t id) const { return sp_->IdToPiece(id); }

std::string Tokenizer::token_text(int32_t id) const {
  const std::string p = sp_->IdToPiece(id);
  if (sp_->IsByte(id) && p.size() == 6) return std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
  if (sp_->IsControl(id) || sp_->IsUnknown(id)) return "";
  std::string out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p.compare(i, 3, "\xe2\x96\x81") == 0) {  // U+2581, sentencepiece's space
      out += ' ';
      i += 2;
    } else {
      out += p[i];
    }
  }
  return out;
}
int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::unique_ptr<TextTokenizer> open_run_tokenizer(const std::string& dir) {
  if (std::filesystem::exists(dir + "/tokenizer.model")) {
    auto t = std::make_unique<Tokenizer>();
    t->load(dir + "/tokenizer.model");
    return t;
  }
  if (std::filesystem::exists(dir + "/hf/tokenizer.json"))
    return std::make_unique<BpeTokenizer>(BpeTokenizer::load(dir + "/hf/tokenizer.json"));
  return nullptr;
}

Tokenizer::PieceKind Tokenizer::kind(int32_t id) const {
  if (sp_->IsUnknown(id)) return PieceKind::unknown;
  if (sp_->IsControl(id)) return PieceKind::control;
  if (sp_->IsByte(id)) return PieceKind::byte;
  if (sp_->IsUnused(id)) return PieceKind::unused;
  return PieceKind::normal;
}

float Tokenizer::score(int32_t id) const { return sp_->GetScore(id); }

int32_t Tokenizer::id_of(const std::string& piece) const {
  const int id = sp_->PieceToId(piece);
  return id == sp_->unk_id() && piece != sp_->IdToPiece(id) ? -1 : id;
}

}  // namespace moe
