// pfcn.hpp: a thin C++ RAII wrapper over the C ABI of pfcn.h (header-only; link the pfcn library).
//
//     pfcn::Model model("model.pt2");                 // throws pfcn::Error on failure
//     pfcn::Result result = model.run(rgb, height, width);
//     for (const pfcn_segment& s : result.segments()) { ... }
//     const int32_t* ids = result.panoptic();         // height * width
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "pfcn.h"

namespace pfcn {

// A failed pfcn call: the status and the message of pfcn_last_error().
class Error : public std::runtime_error {
public:
    Error(pfcn_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    pfcn_status status() const noexcept { return status_; }

private:
    pfcn_status status_;
};

inline void check(pfcn_status status) {
    if (status != PFCN_OK) throw Error(status, pfcn_last_error());
}

inline void load_op_library(const std::string& path) { check(pfcn_load_op_library(path.c_str())); }

class Result {
public:
    explicit Result(pfcn_result* r) : r_(r, &pfcn_free_result) {}
    int height() const { return pfcn_result_height(r_.get()); }
    int width() const { return pfcn_result_width(r_.get()); }
    const int32_t* panoptic() const { return pfcn_result_panoptic(r_.get()); }
    const uint8_t* semantic() const { return pfcn_result_semantic(r_.get()); }
    std::vector<pfcn_segment> segments() const {
        std::vector<pfcn_segment> out(pfcn_result_num_segments(r_.get()));
        for (size_t i = 0; i < out.size(); ++i) check(pfcn_result_segment(r_.get(), static_cast<int>(i), &out[i]));
        return out;
    }
    const pfcn_result* get() const { return r_.get(); }

private:
    std::unique_ptr<pfcn_result, void (*)(pfcn_result*)> r_;
};

class Model {
public:
    explicit Model(const std::string& path, const std::string& device = "cpu") : m_(nullptr, &pfcn_free_model) {
        pfcn_model* m = nullptr;
        check(pfcn_open(path.c_str(), device.c_str(), &m));
        m_.reset(m);
    }
    Result run(const uint8_t* rgb, int height, int width) {
        pfcn_result* r = nullptr;
        check(pfcn_run_rgb(m_.get(), rgb, height, width, &r));
        return Result(r);
    }
    // A metadata value ("" when absent).
    std::string metadata(const std::string& key) const {
        const char* v = pfcn_model_metadata(m_.get(), key.c_str());
        return v ? v : "";
    }
    pfcn_input_spec input_spec() const {
        pfcn_input_spec s{};
        check(pfcn_model_input_spec(m_.get(), &s));
        return s;
    }
    std::vector<pfcn_category> categories() const {
        std::vector<pfcn_category> out(pfcn_model_num_categories(m_.get()));
        for (size_t i = 0; i < out.size(); ++i) check(pfcn_model_category(m_.get(), static_cast<int>(i), &out[i]));
        return out;
    }
    pfcn_model* get() const { return m_.get(); }

private:
    std::unique_ptr<pfcn_model, void (*)(pfcn_model*)> m_;
};

}  // namespace pfcn
