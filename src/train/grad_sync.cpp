#include "train/grad_sync.h"

#include <algorithm>
#include <set>

namespace moe {

GradSync::GradSync(TransformerLM& model, Comm& comm, bool overlap, size_t bucket_bytes)
    : comm_(comm), overlap_(overlap) {
  const size_t cap = bucket_bytes / sizeof(float);
  // The unsharded gradients of ps as buckets of about cap floats (a larger tensor is a bucket alone).
  auto bucket = [&](const std::vector<Param>& ps, std::vector<Bucket>& out) {
    Bucket small;
    size_t n = 0;
    for (const Param& p : ps) {
      if (p.shard.sharded()) continue;  // an expert's gradient is whole on the rank that holds it
      if (p.grad->numel() >= cap) {
        out.push_back({{p.grad}, {}, false});
        continue;
      }
      if (n + p.grad->numel() > cap && !small.grads.empty()) {
        out.push_back(std::move(small));
        small = {};
        n = 0;
      }
      small.grads.push_back(p.grad);
      n += p.grad->numel();
    }
    if (!small.grads.empty()) out.push_back(std::move(small));
  };
  std::set<const Tensor*> in_blocks;
  blocks_.resize(model.blocks.size());
  for (size_t l = 0; l < model.blocks.size(); ++l) {
    const std::vector<Param> ps = model.block_params(l);
    bucket(ps, blocks_[l]);
    for (const Param& p : ps) in_blocks.insert(p.grad);
  }
  std::vector<Param> rest;
  for (const Param& p : model.params())
    if (!in_blocks.count(p.grad)) rest.push_back(p);
  bucket(rest, rest_);
}

void GradSync::start(Bucket& b) {
  if (b.grads.size() > 1) {  // pack the small tensors
    size_t n = 0;
    for (const Tensor* g : b.grads) n += g->numel();
    b.packed.resize(n);
    size_t o = 0;
    for (const Tensor* g : b.grads) {
      std::copy(g->data(), g->data() + g->numel(), b.packed.begin() + static_cast<ptrdiff_t>(o));
      o += g->numel();
    }
    comm_.iallreduce_sum(b.packed.data(), b.packed.size());
  } else {
    comm_.iallreduce_sum(b.grads[0]->data(), b.grads[0]->numel());
  }
  b.started = true;
}

void GradSync::block_done(size_t l) {
  const CommStats before = comm_.stats;
  for (Bucket& b : blocks_[l]) start(b);
  comm_.progress();  // let the started sums move before the next block's backward
  last_ = last_ + (comm_.stats - before);
}

std::function<void(size_t)> GradSync::hook() {
  if (!overlap_) return {};
  last_ = {};
  return [this](size_t l) { block_done(l); };
}

void GradSync::finish() {
  if (!overlap_) last_ = {};
  const CommStats before = comm_.stats;
  for (auto& block : blocks_)
    for (Bucket& b : block)
      if (!b.started) start(b);
  for (Bucket& b : rest_) start(b);
  comm_.wait_all();
  auto unpack = [](Bucket& b) {
    if (!b.packed.empty()) {
      size_t o = 0;
      for (Tensor* g : b.grads) {
        std::copy(b.packed.begin() + static_cast<ptrdiff_t>(o), b.packed.begin() + static_cast<ptrdiff_t>(o + g->numel()),
                  g->data());
        o += g->numel();
      }
    }
    b.started = false;
  };
  for (auto& block : blocks_)
    for (Bucket& b : block) unpack(b);
  for (Bucket& b : rest_) unpack(b);
  last_ = last_ + (comm_.stats - before);
}

}  // namespace moe
