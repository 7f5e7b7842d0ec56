//! C ABI of `vdpa-iova-planner` (work in progress).
