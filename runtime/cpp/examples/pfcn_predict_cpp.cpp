// pfcn_predict_cpp: panoptic predictions from C++ with a pfcn AOTInductor package, written as pfcn-predict does.
//
//     pfcn_predict_cpp IMAGE... MODEL.pt2 OUT [--device cpu|cuda[:N]] [--op-library LIB.so]
//
// Writes OUT/panoptic.json + OUT/panoptic/<stem>.png (COCO panoptic, id = R + 256 G + 256^2 B),
// OUT/semantic/<stem>.png and OUT/json/<stem>.json (segments with category names). Exit code 0 on success,
// 1 when some images failed (the others are written), 2 when nothing could run (bad arguments or model).

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "image_io.hpp"
#include "pfcn.hpp"

namespace {

const char* kUsage =
    "usage: pfcn_predict_cpp IMAGE... MODEL.pt2 OUT [--device cpu|cuda[:N]] [--op-library LIB.so]\n"
    "  --op-library: an operator library to load first (repeatable); also read from PFCN_OP_LIBRARIES\n"
    "                (':'-separated). Graphs with deformable convolutions need torchvision's.\n";

std::string stem_of(const std::string& path) {
    size_t slash = path.find_last_of('/');
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    size_t dot = name.find_last_of('.');
    return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

void make_dir(const std::string& path) {
    if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
        throw std::runtime_error(path + ": cannot create folder (" + std::strerror(errno) + ")");
}

void write_text(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp" + std::to_string(getpid());
    {
        std::ofstream f(tmp, std::ios::binary);
        f << text;
        if (!f.good()) throw std::runtime_error(path + ": cannot write");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot move into place");
}

std::string quote(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

// One segments_info entry as pfcn-predict writes it (plus "name" for the readable json/<stem>.json).
std::string segment_json(const pfcn_segment& s, const std::string* name) {
    std::ostringstream o;
    o << "{\"id\": " << s.id << ", \"category_id\": " << s.category_id;
    if (!name) o << ", \"iscrowd\": 0";
    o << ", \"isthing\": " << (s.isthing ? "true" : "false") << ", \"score\": " << number(s.score)
      << ", \"area\": " << s.area << ", \"bbox\": [" << s.bbox[0] << ", " << s.bbox[1] << ", " << s.bbox[2] << ", "
      << s.bbox[3] << "]";
    if (name) o << ", \"name\": " << quote(*name);
    return o.str() + "}";
}

std::vector<uint8_t> id_to_rgb(const int32_t* ids, size_t n) {
    std::vector<uint8_t> rgb(n * 3);
    for (size_t i = 0; i < n; ++i) {
        const uint32_t v = static_cast<uint32_t>(ids[i]);
        rgb[3 * i] = v & 255;
        rgb[3 * i + 1] = (v >> 8) & 255;
        rgb[3 * i + 2] = (v >> 16) & 255;
    }
    return rgb;
}

int run(int argc, char** argv) {
    std::vector<std::string> positional, op_libraries;
    std::string device = "cpu";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            std::cout << kUsage;
            return 0;
        }
        if (a == "--device" && i + 1 < argc) {
            device = argv[++i];
        } else if (a == "--op-library" && i + 1 < argc) {
            op_libraries.push_back(argv[++i]);
        } else if (a.rfind("--", 0) == 0) {
            std::cerr << "pfcn_predict_cpp: unknown or incomplete option " << a << "\n" << kUsage;
            return 2;
        } else {
            positional.push_back(a);
        }
    }
    if (positional.size() < 3) {
        std::cerr << kUsage;
        return 2;
    }
    const std::string out = positional.back();
    const std::string model_path = positional[positional.size() - 2];
    positional.resize(positional.size() - 2);
    if (const char* env = std::getenv("PFCN_OP_LIBRARIES")) {
        std::stringstream ss(env);
        for (std::string lib; std::getline(ss, lib, ':');)
            if (!lib.empty()) op_libraries.push_back(lib);
    }
    for (const auto& lib : op_libraries) pfcn::load_op_library(lib);

    pfcn::Model model(model_path, device);
    std::vector<std::pair<int, std::string>> names;
    std::string categories_json;  // as in pfcn-predict's panoptic.json: id, name, isthing
    for (const auto& c : model.categories()) {
        names.emplace_back(c.id, c.name);
        categories_json += std::string(categories_json.empty() ? "" : ", ") + "{\"id\": " + std::to_string(c.id) +
                           ", \"name\": " + quote(c.name) + ", \"isthing\": " + std::to_string(c.isthing) + "}";
    }
    auto name_of = [&](int id) {
        for (const auto& [cid, name] : names)
            if (cid == id) return name;
        return std::to_string(id);
    };

    make_dir(out);
    for (const char* sub : {"/panoptic", "/semantic", "/json"}) make_dir(out + sub);
    {
        std::ostringstream o;
        o << "{\"model\": " << quote(model_path) << ", \"backend\": \"aoti-cpp\", \"precision\": \"fp32\", "
          << "\"config_hash\": " << quote(model.metadata("config_hash")) << ", \"pfcn_version\": "
          << quote(model.metadata("pfcn_version")) << ", \"random_weights\": false}\n";
        write_text(out + "/model.json", o.str());
    }

    // COCO integer image ids as pfcn-predict gives them without --gt-json: 1, 2, ... in file-name (then path) order
    std::vector<std::string> ordered(positional.begin(), positional.end());
    auto file_name = [](const std::string& p) { return p.substr(p.find_last_of('/') + 1); };
    std::sort(ordered.begin(), ordered.end(), [&](const std::string& a, const std::string& b) {
        return std::make_pair(file_name(a), a) < std::make_pair(file_name(b), b);
    });
    ordered.erase(std::unique(ordered.begin(), ordered.end()), ordered.end());
    std::map<std::string, int> image_id;
    for (size_t k = 0; k < ordered.size(); ++k) image_id[ordered[k]] = static_cast<int>(k) + 1;

    std::vector<std::string> annotations;
    std::vector<std::pair<std::string, std::string>> failures;
    std::set<std::string> stems;
    const auto start = std::chrono::steady_clock::now();
    for (const auto& path : positional) {
        const std::string stem = stem_of(path);
        if (!stems.insert(stem).second) {
            failures.emplace_back(path, "skipped: another input has the same name '" + stem + "'; rename one");
            continue;
        }
        pfcn_example::Image img;
        try {
            img = pfcn_example::read_image(path);
        } catch (const std::exception& e) {
            failures.emplace_back(path, e.what());
            continue;
        }
        pfcn::Result result = [&] {
            try {
                return model.run(img.rgb.data(), img.height, img.width);
            } catch (const pfcn::Error& e) {
                if (e.status() != PFCN_ERROR_IMAGE) throw;
                failures.emplace_back(path, e.what());
                return pfcn::Result(nullptr);
            }
        }();
        if (!result.get()) continue;
        const size_t n = static_cast<size_t>(result.height()) * result.width();
        const std::string png = stem + ".png";
        const auto rgb = id_to_rgb(result.panoptic(), n);
        pfcn_example::write_png(out + "/panoptic/" + png, rgb.data(), result.height(), result.width(), 3);
        pfcn_example::write_png(out + "/semantic/" + png, result.semantic(), result.height(), result.width(), 1);
        const auto segments = result.segments();
        std::string coco, readable;
        for (size_t k = 0; k < segments.size(); ++k) {
            const std::string name = name_of(segments[k].category_id);
            coco += (k ? ", " : "") + segment_json(segments[k], nullptr);
            readable += (k ? ",\n  " : "\n  ") + segment_json(segments[k], &name);
        }
        const std::string id = std::to_string(image_id[path]);
        annotations.push_back("{\"image_id\": " + id + ", \"file_name\": " + quote(png) +
                              ", \"segments_info\": [" + coco + "]}");
        std::ostringstream summary;
        summary << "{\"file_name\": " << quote(file_name(path)) << ", \"image_id\": "
                << id << ", \"height\": " << result.height() << ", \"width\": " << result.width()
                << ", \"segments_info\": [" << readable << "\n]}\n";
        write_text(out + "/json/" + stem + ".json", summary.str());
    }
    std::string panoptic = "{\"annotations\": [";
    for (size_t k = 0; k < annotations.size(); ++k) panoptic += (k ? ", " : "") + annotations[k];
    panoptic += "], \"categories\": [" + categories_json + "], \"semantic_folder\": \"semantic\"}\n";
    write_text(out + "/panoptic.json", panoptic);  // last: a folder with a panoptic.json is complete

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("pfcn_predict_cpp: %zu image(s) in %.1f s -> %s\n", annotations.size(), seconds, out.c_str());
    if (!failures.empty()) {
        std::fprintf(stderr, "%zu image(s) failed:\n", failures.size());
        for (const auto& [path, why] : failures) std::fprintf(stderr, "  %s: %s\n", path.c_str(), why.c_str());
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const pfcn::Error& e) {
        std::fprintf(stderr, "pfcn_predict_cpp: %s: %s\n", pfcn_status_name(e.status()), e.what());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pfcn_predict_cpp: %s\n", e.what());
    }
    return 2;
}
