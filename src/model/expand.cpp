#include "model/expand.h"

#include <cstring>
#include <map>
#include <set>
#include <string>

#include "core/check.h"
#include "core/error.h"
#include "moe/moe_layer.h"
#include "moe/routers/router.h"

namespace moe {

ModelConfig expanded_config(const ModelConfig& c, const ExpandOptions& o) {
  const ConfigCheck check("moe expand");
  if (c.ffn != FfnKind::moe)
    fail("moe expand: the model has no MoE layers (model.ffn = \"" + std::string(name_of(c.ffn)) +
         "\"); only MoE layers grow by experts: expand a checkpoint trained with model.ffn = \"moe\"");
  check.require(o.add_experts > 0, "--add-experts = " + std::to_string(o.add_experts) + " must be a positive number of experts, e.g. " +
                                       std::to_string(std::max(1, c.moe.num_local_experts / 2)));
  check.positive("--entry-steps", o.entry_steps);
  check.require(std::isfinite(o.copy_noise) && o.copy_noise >= 0.f, "--copy-noise must be a finite number >= 0, e.g. 0.01");
  if (router_traits(c.moe.router).weight_matrices == 0)
    fail("moe expand: router \"" + std::string(name_of(c.moe.router)) + "\" has no router rows to give new experts (its "
         "table of token ids would never send tokens to them); expand a model with a learned router");
  if (c.moe.n_group > 1)
    fail("moe expand: model.n_group = " + std::to_string(c.moe.n_group) + ": group-limited routing would put the old "
         "experts into other groups once experts are added; expand a model with n_group = 1");
  ModelConfig n = c;
  n.moe.num_local_experts += o.add_experts;
  n.moe.entry_steps = o.entry_steps;
  // Each old expert keeps its capacity C = ceil(cf·T·k/E): cf grows with E. Expert choice takes cf = 1
  // when none is set.
  const bool own_capacity = router_traits(c.moe.router).applies_capacity;
  const float cf = c.moe.capacity_factor > 0.f ? c.moe.capacity_factor : own_capacity ? 1.f : 0.f;
  if (cf > 0.f)
    n.moe.capacity_factor = static_cast<float>(static_cast<double>(cf) * n.moe.num_local_experts / c.moe.num_local_experts);
  n.validate();
  return n;
}

Tensor grow_rows_zero(const Tensor& old, const std::vector<int64_t>& to) {
  Tensor t(to);
  MOE_CHECK(old.ndim() == t.ndim() && old.dim(0) <= t.dim(0) && old.numel() / static_cast<size_t>(std::max<int64_t>(1, old.dim(0))) ==
                                                                   t.numel() / static_cast<size_t>(std::max<int64_t>(1, t.dim(0))),
            "moe expand: state of shape " + old.shape_str() + " does not grow into " + t.shape_str());
  std::memcpy(t.data(), old.data(), sizeof(float) * old.numel());
  return t;
}

std::unique_ptr<TransformerLM> expand_model(const TransformerLM& old_model, const ExpandOptions& o, FreezeMask* frozen) {
  TransformerLM& old = const_cast<TransformerLM&>(old_model);  // params() lists pointers; nothing is written
  auto model = std::make_unique<TransformerLM>(expanded_config(old.cfg, o), ParamInit::random);
  const int old_experts = old.cfg.moe.num_local_experts * old.cfg.moe.granularity;
  std::set<std::string> grown;  // the MoE layers' parameters and buffers, grown by grow_from
  for (size_t l = 0; l < model->blocks.size(); ++l) {
    auto* layer = model->blocks[l].ffn_as<MoeLayer>();
    if (!layer) continue;
    layer->grow_from(*old.blocks[l].ffn_as<MoeLayer>(),
                     o.init == ExpertInit::copy ? MoeLayer::NewExperts::copy : MoeLayer::NewExperts::random, o.copy_noise,
                     old.cfg.seed);
    const std::string prefix = "model.layers." + std::to_string(l) + ".mlp.";
    std::vector<Param> ps;
    layer->collect_params(ps, prefix);
    for (const Param& p : ps) grown.insert(p.name);
    std::vector<NamedTensor> bs;
    layer->collect_buffers(bs, prefix);
    for (const auto& b : bs) grown.insert(b.first);
    if (frozen) layer->freeze_old(old_experts, o.freeze != FreezeScope::experts, prefix, *frozen);
  }
  // Everything else is the old model's, unchanged.
  std::map<std::string, const Tensor*> from;
  for (const Param& p : old.params()) from[p.name] = p.value;
  for (const auto& [name, b] : old.buffers()) from[name] = b;
  auto take = [&](const std::string& name, Tensor& to) {
    if (grown.count(name)) return;
    auto it = from.find(name);
    MOE_CHECK(it != from.end() && it->second->shape() == to.shape(), "moe expand: " + name + " has no counterpart in the old model");
    to = *it->second;
  };
  for (const Param& p : model->params()) {
    take(p.name, *p.value);
    if (frozen && o.freeze == FreezeScope::all_old && !grown.count(p.name)) (*frozen)[p.name] = {{0, p.value->dim(0)}};
  }
  for (const auto& [name, b] : model->buffers()) take(name, *b);
  return model;
}

}  // namespace moe
