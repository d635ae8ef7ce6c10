// Data-parallel glue between the trainer and src/dist (see distributed.h).
#include "train/distributed.h"

#include <fmt/format.h>

#include "train/fsdp_adamw.h"
#include "train/fully_sharded.h"
#include "train/sharded_adamw.h"
#include "train/step.h"
#include "util/error.h"

namespace qad::train {

DataParallel::DataParallel(const DistConfig& dist, torch::Device device) : dist_(dist) {
  dist::LaunchEnv env;
  env.rank = dist.rank;
  env.world_size = dist.world_size;
  env.local_rank = dist.local_rank;
  env.master_addr = dist.master_addr;
  env.master_port = dist.master_port;
  comm_ = dist::Communicator::connect(env, device, dist.timeout_s);
}

DataParallel::~DataParallel() {
  if (student_shards_) student_shards_->detach();
  if (teacher_shards_) teacher_shards_->detach();
}

std::unique_ptr<Optimizer> DataParallel::make_optimizer(const NamedTensors& params, const OptimConfig& options,
                                                        model::CausalLM* student, model::CausalLM* teacher) {
  QAD_CHECK(!reducer_ && !student_shards_, "DataParallel::make_optimizer called twice");
  if (dist_.fully_sharded) {
    QAD_CHECK(options.offload == "none", "--offload optimizer with --zero 3: the fully sharded optimizer keeps only "
              "its 1/{} of the state on each GPU and has no host-offload path; drop --offload, or use --zero 0 to "
              "offload every rank's full state to host memory", dist_.world_size);
    QAD_CHECK(student != nullptr, "fully sharded training: make_optimizer needs the student model");
    for (const auto& [n, p] : params) p.set_requires_grad(true);
    student_shards_ = ShardedModel::attach(*student, params, *comm_, /*trained=*/true);
    if (teacher != nullptr) {
      NamedTensors all;
      for (auto& [n, p] : (*teacher)->hf_tensors()) all.emplace_back(n, p);
      teacher_shards_ = ShardedModel::attach(*teacher, std::move(all), *comm_, /*trained=*/false);
    }
    return std::make_unique<FsdpAdamW>(student_shards_, options);
  }
  std::vector<torch::Tensor> ts;
  for (const auto& [n, p] : params) {
    p.set_requires_grad(true);
    ts.push_back(p);
  }
  reducer_ = std::make_unique<dist::GradReducer>(ts, static_cast<int64_t>(dist_.bucket_mb * 1024 * 1024), *comm_);
  if (dist_.zero) {
    QAD_CHECK(options.offload == "none", "--offload optimizer with ZeRO-1: the sharded optimizer keeps its 1/{} of the "
              "state on the GPU; pass --zero 0 to offload every rank's full state to host memory instead, or drop "
              "--offload", dist_.world_size);
    return std::make_unique<ShardedAdamW>(params, options, *comm_, *reducer_);
  }
  return make_adamw(params, options);
}

int64_t DataParallel::sum_tokens(int64_t local) {
  auto t = torch::full({1}, static_cast<double>(local), torch::TensorOptions().dtype(torch::kFloat64).device(comm_->device()));
  comm_->allreduce_sum(t, "token count all-reduce");
  return static_cast<int64_t>(std::llround(t.item<double>()));
}

void DataParallel::begin_step() {
  if (student_shards_) return;  // the gradients live in the units' shards
  QAD_CHECK(reducer_, "DataParallel: make_optimizer first");
  reducer_->attach_grads();
}

void DataParallel::before_last_backward() {
  if (reducer_) reducer_->arm();
}

void DataParallel::finish_gradients() {
  if (student_shards_) {
    student_shards_->finish_backward();
  } else {
    reducer_->finish();
  }
}

DataParallel::FullParameters::FullParameters(std::shared_ptr<ShardedModel> m) : model_(std::move(m)) {
  model_->gather_all();
}

DataParallel::FullParameters::~FullParameters() { model_->release_all(/*take_back=*/true); }

std::unique_ptr<DataParallel::FullParameters> DataParallel::full_parameters() {
  if (!student_shards_) return nullptr;
  return std::make_unique<FullParameters>(student_shards_);
}

LossValues DataParallel::reduce_values(const LossValues& local, int64_t global_tokens) {
  const double share = static_cast<double>(local.tokens) / static_cast<double>(std::max<int64_t>(global_tokens, 1));
  // [loss, kl, ce, cka_term, cka per layer...]; absent values are absent on every rank (same configuration).
  std::vector<double> v = {local.loss, local.kl.value_or(0), local.ce.value_or(0), local.cka_term.value_or(0)};
  for (const auto& [n, x] : local.cka) v.push_back(x);
  auto t = torch::tensor(v, torch::kFloat64) * share;
  t = t.to(comm_->device());
  comm_->allreduce_sum(t, "loss metrics all-reduce");
  t = t.cpu();
  const auto* a = t.data_ptr<double>();
  LossValues out = local;
  out.loss = a[0];
  if (out.kl) out.kl = a[1];
  if (out.ce) out.ce = a[2];
  if (out.cka_term) out.cka_term = a[3];
  for (size_t i = 0; i < out.cka.size(); ++i) out.cka[i].second = a[4 + i];
  out.tokens = global_tokens;
  return out;
}

double DataParallel::max_over_ranks(double v) {
  auto t = torch::full({1}, v, torch::TensorOptions().dtype(torch::kFloat64).device(comm_->device()));
  comm_->allreduce_max(t, "metrics all-reduce (max)");
  return t.item<double>();
}

}  // namespace qad::train
