// Named points of a training step, for a timeline that the Kineto profiler cannot give unperturbed: bench_train
// --timeline records, at each point, how far the host has got and (with a CUDA event) when the device has finished
// the work queued before it. Where the two meet, the host sets the pace; the variants' device times between two
// points locate what a loss term adds. No sink (the default): each point costs one test of an atomic flag.
#pragma once
#include <functional>

namespace qad::train {

// The points train_step passes, in order, for each micro-batch (the teacher's only where a teacher model runs, not
// from a teacher cache; the last two once a step, on the device-side step only).
inline constexpr const char* kMarkTeacherForward = "teacher forward";  // before the teacher's forward
inline constexpr const char* kMarkStudentForward = "student forward";  // before the student's forward
inline constexpr const char* kMarkLoss = "loss";                       // before the loss head and the CKA term
inline constexpr const char* kMarkBackward = "backward";               // before the backward
inline constexpr const char* kMarkOptimizer = "optimizer";             // after the backward: norm, check, update
inline constexpr const char* kMarkRead = "read";                       // the step queued, before its one read

// Process-wide; called on the thread that runs train_step. An empty function removes the sink. Not for use while
// another thread trains.
void set_step_mark_sink(std::function<void(const char* point)> sink);
void step_mark(const char* point);

}  // namespace qad::train
