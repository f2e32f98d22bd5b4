// chat_template.h — the chat templates of Hugging Face tokenizer_config.json files: a subset of Jinja2
// large enough for the templates MoE chat checkpoints ship (Mixtral-Instruct's [INST], Qwen's ChatML,
// OLMoE-Instruct's Tulu format), rendered as transformers renders them (trim_blocks and lstrip_blocks on,
// raise_exception available). Checked against jinja2 itself (tests/interop/chat_parity.py).
//
// Supported: text; {{ expr }}; {% if %}/{% elif %}/{% else %}/{% endif %}; {% for x in expr %} …
// {% endfor %} with loop.index, loop.index0, loop.first, loop.last, loop.length; {% set x = expr %};
// {#- comments -#}; '-' whitespace control on every tag. Expressions: string, number, true/false/none
// literals (either case), names, x.key and x[expr] (negative list indices too), + - * / % ~, == != < >
// <= >=, in / not in, and / or / not, `is defined` / `is not defined` / `is none` / `is string`,
// filters trim, length, upper, lower, and calls to raise_exception(msg). Anything else is refused with
// an error naming the construct and its offset in the template.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "data/tokenizer.h"

namespace moe {

// A template value: undefined (a missing name or key), none, bool, integer, string, list or dict.
struct ChatValue {
  struct Undefined {};
  using List = std::vector<ChatValue>;
  using Dict = std::map<std::string, ChatValue>;
  std::variant<Undefined, std::monostate, bool, long long, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>> v;
};

struct ChatMessage {
  std::string role, content;
};

// Renders `tmpl` with messages, add_generation_prompt, bos_token and eos_token (what transformers'
// apply_chat_template passes). Throws moe::Error for what the subset does not support, and with the
// template's own message when it calls raise_exception.
std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token);

// A run folder's chat format: the template and special tokens of its imported hf/tokenizer_config.json
// ("chat_template" as a string, or the one named "default"); nullopt when it has none.
struct ChatFormat {
  std::string tmpl, bos_token, eos_token;
};
std::optional<ChatFormat> read_chat_format(const std::string& dir);
// A rendered conversation as token ids: the bos and eos strings the template wrote map to their own ids
// (a sentencepiece tokenizer would split "<s>" into pieces), the text between them is encoded.
std::vector<int32_t> encode_chat(const TextTokenizer& tok, const std::string& text, const ChatFormat& f);

}  // namespace moe
