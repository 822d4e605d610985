// The C ABI of pfcn.h over libtorch's AOTInductor package loader.
//
// Every exported function catches everything at the boundary: a failure becomes a pfcn_status plus a thread-local
// message, never an exception or an abort in the caller.

#include "pfcn.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "json.hpp"

namespace {

thread_local std::string last_error;

// A failure with the status it maps to; the message names the file or value at fault and what to do.
struct Failure : std::runtime_error {
    pfcn_status status;
    Failure(pfcn_status s, const std::string& message) : std::runtime_error(message), status(s) {}
};

template <class F>
pfcn_status guarded(F&& body) {
    try {
        last_error.clear();
        body();
        return PFCN_OK;
    } catch (const Failure& e) {
        last_error = e.what();
        return e.status;
    } catch (const c10::Error& e) {
        last_error = e.what_without_backtrace();
        return PFCN_ERROR_RUNTIME;
    } catch (const std::exception& e) {
        last_error = e.what();
        return PFCN_ERROR_RUNTIME;
    } catch (...) {
        last_error = "unknown C++ exception";
        return PFCN_ERROR_RUNTIME;
    }
}

void require(bool ok, pfcn_status status, const std::string& message) {
    if (!ok) throw Failure(status, message);
}

// The end-to-end graph's outputs, in graph order (pfcn.contract.E2E_OUTPUTS); the package's own output_names win.
const std::vector<std::string> kE2EOutputs = {
    "panoptic", "semantic", "instance_masks", "instance_scores", "instance_classes", "instance_valid",
    "segment_ids", "segment_classes", "segment_isthing", "segment_scores", "segment_areas", "segment_valid",
    "instance_category_ids", "segment_category_ids"};

struct Category {
    int32_t id;
    int32_t isthing;
    std::string name;
    std::array<uint8_t, 3> color;
};

int as_int(const pfcn::json::Value& v, const std::string& what) {
    if (!v.is_number()) throw std::runtime_error(what + " is not a number");
    return static_cast<int>(v.number);
}

}  // namespace

struct pfcn_model {
    std::string path;
    c10::Device device{c10::kCPU};
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    std::unordered_map<std::string, std::string> metadata;
    std::vector<Category> categories;
    pfcn_input_spec spec{};
    std::unordered_map<std::string, size_t> output_index;
    std::mutex run_mutex;
};

struct pfcn_result {
    int height = 0;
    int width = 0;
    std::vector<int32_t> panoptic;
    std::vector<uint8_t> semantic;
    std::vector<pfcn_segment> segments;
};

namespace {

void read_categories(pfcn_model& m) {
    const std::string& text = m.metadata.at("categories");
    pfcn::json::Value cats = pfcn::json::parse(text);
    if (!cats.is_array()) throw std::runtime_error("'categories' is not a list");
    for (size_t i = 0; i < cats.array.size(); ++i) {
        const auto& c = cats.array[i];
        std::string where = "category #" + std::to_string(i);
        Category cat{};
        cat.id = as_int(c.at("id"), where + " 'id'");
        const auto& isthing = c.at("isthing");
        cat.isthing = isthing.kind == pfcn::json::Value::Kind::Bool ? isthing.boolean : as_int(isthing, where);
        const auto* name = c.find("name");
        cat.name = name && name->is_string() ? name->string : std::to_string(cat.id);
        cat.color = {0, 0, 0};
        if (const auto* color = c.find("color"); color && color->is_array() && color->array.size() == 3)
            for (int k = 0; k < 3; ++k) cat.color[k] = static_cast<uint8_t>(as_int(color->array[k], where + " color"));
        m.categories.push_back(std::move(cat));
    }
}

void read_input_spec(pfcn_model& m) {
    pfcn::json::Value spec = pfcn::json::parse(m.metadata.at("input_spec"));
    const std::string graph = spec.at("graph").string;
    require(graph == "e2e", PFCN_ERROR_ARTIFACT,
            m.path + ": a '" + graph + "' graph has no panoptic outputs; export it with --graph e2e");
    const auto& shape = spec.at("inputs").at("images").at("shape");
    require(shape.is_array() && shape.array.size() == 4, PFCN_ERROR_ARTIFACT,
            m.path + ": input_spec images shape is not [B, 3, H, W]; re-export it with pfcn-export");
    pfcn_input_spec s{};
    s.batch = shape.array[0].is_number() ? as_int(shape.array[0], "batch") : 0;
    const auto* range = spec.find("dynamic_range");
    if (shape.array[2].is_number() && shape.array[3].is_number()) {
        s.fixed = 1;
        s.min_height = 1;
        s.min_width = 1;
        s.max_height = as_int(shape.array[2], "height");
        s.max_width = as_int(shape.array[3], "width");
    } else {
        require(range && range->is_array() && range->array.size() == 4, PFCN_ERROR_ARTIFACT,
                m.path + ": a dynamic graph without 'dynamic_range' in its input_spec; re-export it with pfcn-export");
        s.fixed = 0;
        s.min_height = as_int(range->array[0], "dynamic_range");
        s.min_width = as_int(range->array[1], "dynamic_range");
        s.max_height = as_int(range->array[2], "dynamic_range");
        s.max_width = as_int(range->array[3], "dynamic_range");
    }
    m.spec = s;
}

void read_output_names(pfcn_model& m) {
    std::vector<std::string> names = kE2EOutputs;
    if (auto it = m.metadata.find("output_names"); it != m.metadata.end()) {
        pfcn::json::Value v = pfcn::json::parse(it->second);
        if (v.is_array()) {
            names.clear();
            for (const auto& n : v.array) names.push_back(n.string);
        }
    }
    for (size_t i = 0; i < names.size(); ++i) m.output_index[names[i]] = i;
    for (const auto& need : kE2EOutputs)
        require(m.output_index.count(need) > 0, PFCN_ERROR_ARTIFACT,
                m.path + ": the package has no output '" + need + "'; re-export it with this pfcn version");
}

const at::Tensor& output(const pfcn_model& m, const std::vector<at::Tensor>& outs, const std::string& name) {
    size_t i = m.output_index.at(name);
    require(i < outs.size(), PFCN_ERROR_RUNTIME,
            m.path + ": the package returned " + std::to_string(outs.size()) + " outputs, output '" + name +
                "' is #" + std::to_string(i) + "; re-export it with this pfcn version");
    return outs[i];
}

void fill_segments(const pfcn_model& m, const std::vector<at::Tensor>& outs, pfcn_result& r) {
    auto cpu = [&](const char* name) { return output(m, outs, name)[0].to(c10::kCPU).contiguous(); };
    at::Tensor valid = cpu("segment_valid").to(at::kBool);
    at::Tensor ids = cpu("segment_ids").to(at::kLong);
    at::Tensor cats = cpu("segment_category_ids").to(at::kLong);
    at::Tensor isthing = cpu("segment_isthing").to(at::kBool);
    at::Tensor scores = cpu("segment_scores").to(at::kFloat);
    at::Tensor areas = cpu("segment_areas").to(at::kLong);
    const int64_t n = valid.numel();
    const bool* v = valid.data_ptr<bool>();
    std::unordered_map<int32_t, size_t> by_id;
    for (int64_t k = 0; k < n; ++k) {
        if (!v[k]) continue;
        pfcn_segment s{};
        s.id = static_cast<int32_t>(ids.data_ptr<int64_t>()[k]);
        s.category_id = static_cast<int32_t>(cats.data_ptr<int64_t>()[k]);
        s.isthing = isthing.data_ptr<bool>()[k] ? 1 : 0;
        s.score = scores.data_ptr<float>()[k];
        s.area = areas.data_ptr<int64_t>()[k];
        by_id[s.id] = r.segments.size();
        r.segments.push_back(s);
    }
    // bounding boxes from the id map, in one pass: [x0, y0, x1, y1] per segment, then COCO [x, y, w, h]
    std::vector<std::array<int, 4>> box(r.segments.size(), {std::numeric_limits<int>::max(),
                                                             std::numeric_limits<int>::max(), -1, -1});
    for (int y = 0; y < r.height; ++y) {
        const int32_t* row = r.panoptic.data() + static_cast<size_t>(y) * r.width;
        for (int x = 0; x < r.width; ++x) {
            if (row[x] == 0) continue;
            auto it = by_id.find(row[x]);
            if (it == by_id.end()) continue;
            auto& b = box[it->second];
            b[0] = std::min(b[0], x);
            b[1] = std::min(b[1], y);
            b[2] = std::max(b[2], x);
            b[3] = std::max(b[3], y);
        }
    }
    for (size_t k = 0; k < r.segments.size(); ++k) {
        const auto& b = box[k];
        auto& out = r.segments[k].bbox;
        if (b[2] < 0) {
            out[0] = out[1] = out[2] = out[3] = 0;
        } else {
            out[0] = b[0];
            out[1] = b[1];
            out[2] = b[2] - b[0] + 1;
            out[3] = b[3] - b[1] + 1;
        }
    }
    std::sort(r.segments.begin(), r.segments.end(),
              [](const pfcn_segment& a, const pfcn_segment& b) { return a.id < b.id; });
}

std::string size_text(int h, int w) { return std::to_string(h) + "x" + std::to_string(w); }

// A package that libtorch cannot open, as a Failure that says what to do.
[[noreturn]] void load_failure(const std::string& path, const std::exception& e) {
    std::string why = e.what();
    if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) why = ce->what_without_backtrace();
    if (why.find("Could not find schema for") != std::string::npos)  // an operator from another library
        throw Failure(PFCN_ERROR_ARTIFACT, path + ": the package calls an operator that is not loaded (" + why +
                                               "); load its library first with pfcn_load_op_library (torchvision's "
                                               "operator library for deformable convolutions)");
    throw Failure(PFCN_ERROR_ARTIFACT,
                  path + ": not a loadable AOTInductor package (" + why + "); export one with pfcn-export --format aoti");
}

}  // namespace

extern "C" {

const char* pfcn_last_error(void) { return last_error.c_str(); }

int pfcn_abi_version(void) { return PFCN_ABI_VERSION; }

const char* pfcn_status_name(pfcn_status status) {
    switch (status) {
        case PFCN_OK: return "PFCN_OK";
        case PFCN_ERROR_ARGUMENT: return "PFCN_ERROR_ARGUMENT";
        case PFCN_ERROR_FILE: return "PFCN_ERROR_FILE";
        case PFCN_ERROR_ARTIFACT: return "PFCN_ERROR_ARTIFACT";
        case PFCN_ERROR_IMAGE: return "PFCN_ERROR_IMAGE";
        case PFCN_ERROR_RUNTIME: return "PFCN_ERROR_RUNTIME";
    }
    return "PFCN_ERROR_UNKNOWN";
}

pfcn_status pfcn_load_op_library(const char* path) {
    return guarded([&] {
        require(path != nullptr, PFCN_ERROR_ARGUMENT, "pfcn_load_op_library: path is NULL");
        require(std::ifstream(path).good(), PFCN_ERROR_FILE, std::string(path) + ": no such file (operator library)");
        // RTLD_GLOBAL: the library registers its operators with the dispatcher on load and must stay loaded.
        void* handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
        const char* why = handle ? nullptr : dlerror();
        require(handle != nullptr, PFCN_ERROR_FILE,
                std::string(path) + ": cannot load operator library: " + (why ? why : "unknown dlopen error"));
    });
}

pfcn_status pfcn_open(const char* path, const char* device, pfcn_model** out) {
    return guarded([&] {
        require(out != nullptr, PFCN_ERROR_ARGUMENT, "pfcn_open: out is NULL");
        *out = nullptr;
        require(path != nullptr, PFCN_ERROR_ARGUMENT, "pfcn_open: path is NULL");
        auto m = std::make_unique<pfcn_model>();
        m->path = path;
        try {
            m->device = c10::Device(device ? device : "cpu");
        } catch (const c10::Error&) {
            throw Failure(PFCN_ERROR_ARGUMENT, std::string("device '") + device + "': use cpu, cuda or cuda:N");
        }
        require(m->device.is_cpu() || m->device.is_cuda(), PFCN_ERROR_ARGUMENT,
                std::string("device '") + device + "': use cpu, cuda or cuda:N");
        require(std::ifstream(path, std::ios::binary).good(), PFCN_ERROR_FILE,
                m->path + ": no such file or not readable");
        try {
            // read from the archive before its shared library is loaded: a package for another device, or one
            // that is not pfcn's, gets a clear message instead of a loader failure
            m->metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(m->path, "model");
        } catch (const std::exception& e) {
            load_failure(m->path, e);
        }
        require(m->metadata.count("pfcn_version") > 0, PFCN_ERROR_ARTIFACT,
                m->path + ": no pfcn metadata (key 'pfcn_version' missing); this package was not written by "
                          "pfcn-export --format aoti");
        for (const char* key : {"categories", "input_spec"})
            require(m->metadata.count(key) > 0, PFCN_ERROR_ARTIFACT,
                    m->path + ": pfcn metadata lacks '" + key + "'; re-export it with this pfcn version");
        auto it = m->metadata.find("device");  // pfcn's key; AOTInductor's own one otherwise
        if (it == m->metadata.end()) it = m->metadata.find("AOTI_DEVICE_KEY");
        if (it != m->metadata.end()) {
            const std::string built = it->second;
            const std::string asked = m->device.is_cuda() ? "cuda" : "cpu";
            require(built == asked, PFCN_ERROR_ARGUMENT,
                    m->path + ": the package was compiled for '" + built + "' but device '" +
                        (device ? device : "cpu") + "' was asked; export it for that device or open it on " + built);
        }
        try {
            const c10::DeviceIndex index = m->device.is_cuda() && m->device.has_index() ? m->device.index() : -1;
            m->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(m->path, "model", false, 1, index);
        } catch (const std::exception& e) {
            load_failure(m->path, e);
        }
        try {
            read_categories(*m);
            read_input_spec(*m);
            read_output_names(*m);
        } catch (const Failure&) {
            throw;
        } catch (const std::exception& e) {
            throw Failure(PFCN_ERROR_ARTIFACT, m->path + ": unreadable pfcn metadata: " + e.what() +
                                                   "; re-export it with pfcn-export --format aoti");
        }
        *out = m.release();
    });
}

void pfcn_free_model(pfcn_model* model) { delete model; }

const char* pfcn_model_metadata(const pfcn_model* model, const char* key) {
    if (!model || !key) return nullptr;
    auto it = model->metadata.find(key);
    return it == model->metadata.end() ? nullptr : it->second.c_str();
}

pfcn_status pfcn_model_input_spec(const pfcn_model* model, pfcn_input_spec* out) {
    return guarded([&] {
        require(model && out, PFCN_ERROR_ARGUMENT, "pfcn_model_input_spec: NULL argument");
        *out = model->spec;
    });
}

int pfcn_model_num_categories(const pfcn_model* model) {
    return model ? static_cast<int>(model->categories.size()) : 0;
}

pfcn_status pfcn_model_category(const pfcn_model* model, int index, pfcn_category* out) {
    return guarded([&] {
        require(model && out, PFCN_ERROR_ARGUMENT, "pfcn_model_category: NULL argument");
        require(index >= 0 && index < static_cast<int>(model->categories.size()), PFCN_ERROR_ARGUMENT,
                "pfcn_model_category: index " + std::to_string(index) + " outside 0.." +
                    std::to_string(model->categories.size()));
        const Category& c = model->categories[index];
        out->id = c.id;
        out->isthing = c.isthing;
        out->name = c.name.c_str();
        std::memcpy(out->color, c.color.data(), 3);
    });
}

pfcn_status pfcn_run_rgb(pfcn_model* model, const uint8_t* rgb, int height, int width, pfcn_result** out) {
    return guarded([&] {
        require(out != nullptr, PFCN_ERROR_ARGUMENT, "pfcn_run_rgb: out is NULL");
        *out = nullptr;
        require(model && rgb, PFCN_ERROR_ARGUMENT, "pfcn_run_rgb: model or rgb is NULL");
        require(height > 0 && width > 0, PFCN_ERROR_IMAGE,
                "pfcn_run_rgb: image size " + size_text(height, width) + " is empty");
        const pfcn_input_spec& s = model->spec;
        if (s.fixed) {
            require(height <= s.max_height && width <= s.max_width, PFCN_ERROR_IMAGE,
                    model->path + ": image " + size_text(height, width) + " does not fit the graph's fixed input " +
                        size_text(s.max_height, s.max_width) +
                        "; export a graph with --dynamic (or a larger --input-size)");
        } else {
            require(height >= s.min_height && width >= s.min_width && height <= s.max_height && width <= s.max_width,
                    PFCN_ERROR_IMAGE,
                    model->path + ": image " + size_text(height, width) + " is outside the graph's dynamic range " +
                        size_text(s.min_height, s.min_width) + " .. " + size_text(s.max_height, s.max_width) +
                        "; resize it or export a graph with a wider --dynamic range");
        }
        const int64_t batch = s.batch > 0 ? s.batch : 1;
        const int64_t ch = s.fixed ? s.max_height : height;
        const int64_t cw = s.fixed ? s.max_width : width;
        c10::InferenceMode inference;
        // the canvas: the image top-left, zeros elsewhere; a fixed batch repeats the image (extra results unused)
        at::Tensor image = at::from_blob(const_cast<uint8_t*>(rgb), {height, width, 3}, at::kByte).permute({2, 0, 1});
        at::Tensor canvas = at::zeros({batch, 3, ch, cw}, at::kByte);
        for (int64_t b = 0; b < batch; ++b)
            canvas[b].slice(1, 0, height).slice(2, 0, width).copy_(image);
        at::Tensor sizes = at::empty({batch, 2}, at::kLong);
        for (int64_t b = 0; b < batch; ++b) {
            sizes[b][0] = height;
            sizes[b][1] = width;
        }
        std::vector<at::Tensor> outs;
        {
            std::lock_guard<std::mutex> lock(model->run_mutex);
            outs = model->loader->run({canvas.to(model->device), sizes.to(model->device)});
        }
        auto r = std::make_unique<pfcn_result>();
        r->height = height;
        r->width = width;
        at::Tensor pan = output(*model, outs, "panoptic")[0].slice(0, 0, height).slice(1, 0, width);
        pan = pan.to(c10::kCPU).to(at::kInt).contiguous();
        r->panoptic.assign(pan.data_ptr<int32_t>(), pan.data_ptr<int32_t>() + pan.numel());
        at::Tensor sem = output(*model, outs, "semantic")[0].slice(0, 0, height).slice(1, 0, width);
        sem = sem.to(c10::kCPU).clamp(0, 255).to(at::kByte).contiguous();
        r->semantic.assign(sem.data_ptr<uint8_t>(), sem.data_ptr<uint8_t>() + sem.numel());
        fill_segments(*model, outs, *r);
        *out = r.release();
    });
}

void pfcn_free_result(pfcn_result* result) { delete result; }

int pfcn_result_height(const pfcn_result* result) { return result ? result->height : 0; }
int pfcn_result_width(const pfcn_result* result) { return result ? result->width : 0; }
const int32_t* pfcn_result_panoptic(const pfcn_result* result) { return result ? result->panoptic.data() : nullptr; }
const uint8_t* pfcn_result_semantic(const pfcn_result* result) { return result ? result->semantic.data() : nullptr; }
int pfcn_result_num_segments(const pfcn_result* result) {
    return result ? static_cast<int>(result->segments.size()) : 0;
}

pfcn_status pfcn_result_segment(const pfcn_result* result, int index, pfcn_segment* out) {
    return guarded([&] {
        require(result && out, PFCN_ERROR_ARGUMENT, "pfcn_result_segment: NULL argument");
        require(index >= 0 && index < static_cast<int>(result->segments.size()), PFCN_ERROR_ARGUMENT,
                "pfcn_result_segment: index " + std::to_string(index) + " outside 0.." +
                    std::to_string(result->segments.size()));
        *out = result->segments[index];
    });
}

}  // extern "C"
