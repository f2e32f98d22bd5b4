// cmd_tokenize.cpp — `moe tokenize`: text to token ids (or ids back to text) with a run's tokenizer or a
// tokenizer file (sentencepiece .model, Hugging Face tokenizer.json), to check it against another
// implementation or to make the ids files of `eval --ids`, `logits` and `generate --prompt-ids`.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "core/error.h"
#include "core/files.h"
#include "data/bpe_tokenizer.h"
#include "data/chat_template.h"
#include "interop/scoring.h"

namespace moe::cli {

void add_tokenize(CLI::App& app) {
  static std::string ckpt, file, text, text_file, ids, chat;
  static bool render = false, no_generation_prompt = false;
  auto* cmd = app.add_subcommand("tokenize", "Text to token ids (or --decode ids to text) with a run's or a file's tokenizer");
  auto* c = cmd->add_option("--ckpt", ckpt, "Run folder (its tokenizer.model, or an imported hf/tokenizer.json)");
  cmd->add_option("--tokenizer", file, "Tokenizer file: sentencepiece .model, or a Hugging Face tokenizer.json")->excludes(c);
  auto* t = cmd->add_option("--text", text, "Text to encode");
  auto* tf = cmd->add_option("--file", text_file, "File whose whole text to encode")->excludes(t);
  cmd->add_option("--decode", ids, "Decode this ids file (whitespace-separated integers) instead")->excludes(t)->excludes(tf);
  cmd->add_option("--chat", chat, "A conversation (JSON: [{\"role\": ..., \"content\": ...}, ...]) through the run's chat "
                                  "template (--ckpt of an imported model)")
      ->excludes(t)
      ->excludes(tf);
  cmd->add_flag("--render", render, "With --chat: print the rendered text instead of its ids");
  cmd->add_flag("--no-generation-prompt", no_generation_prompt, "With --chat: add_generation_prompt = false");
  cmd->callback([] {
    std::unique_ptr<TextTokenizer> tok;
    if (!ckpt.empty()) {
      tok = open_run_tokenizer(ckpt);
      if (!tok) fail(ckpt + " has neither tokenizer.model nor hf/tokenizer.json");
    } else if (file.size() > 5 && file.compare(file.size() - 5, 5, ".json") == 0) {
      tok = std::make_unique<BpeTokenizer>(BpeTokenizer::load(file));
    } else if (!file.empty()) {
      auto sp = std::make_unique<Tokenizer>();
      sp->load(file);
      tok = std::move(sp);
    } else {
      throw CLI::RequiredError("--ckpt or --tokenizer");
    }
    if (!chat.empty()) {
      if (ckpt.empty()) fail("--chat needs --ckpt: the chat template is an imported run's hf/tokenizer_config.json");
      const std::optional<ChatFormat> f = read_chat_format(ckpt);
      if (!f) fail(ckpt + " has no chat template (hf/tokenizer_config.json with \"chat_template\")");
      const nlohmann::json j = nlohmann::json::parse(read_file(chat, "give a JSON list of messages"), nullptr, false);
      std::vector<ChatMessage> messages;
      if (!j.is_array()) fail(chat + ": a conversation is a JSON list of {\"role\": ..., \"content\": ...}");
      for (const nlohmann::json& m : j) {
        if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() || !m["content"].is_string())
          fail(chat + ": every message needs string \"role\" and \"content\"");
        messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
      const std::string rendered = render_chat_template(f->tmpl, messages, !no_generation_prompt, f->bos_token, f->eos_token);
      if (render) {
        std::fwrite(rendered.data(), 1, rendered.size(), stdout);
        return;
      }
      std::string line;
      for (int32_t id : encode_chat(*tok, rendered, *f)) line += (line.empty() ? "" : " ") + std::to_string(id);
      std::printf("%s\n", line.c_str());
      return;
    }
    if (!ids.empty()) {
      for (const auto& seq : read_token_ids(ids, tok->vocab_size())) std::printf("%s\n", tok->decode(seq).c_str());
      return;
    }
    if (text.empty() && text_file.empty()) throw CLI::RequiredError("--text, --file or --decode");
    const std::string in = text_file.empty() ? text : read_file(text_file, "give a text file to encode");
    std::string line;
    for (int32_t id : tok->encode(in)) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::printf("%s\n", line.c_str());
  });
}

}  // namespace moe::cli
