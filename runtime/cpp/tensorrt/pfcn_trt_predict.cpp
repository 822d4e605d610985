// pfcn_trt_predict: run a pfcn end-to-end TensorRT engine (pfcn-export --format engine) from C++.
//
//     pfcn_trt_predict IMAGE model.engine OUT_PANOPTIC.png
//
// Reads the engine's metadata from its sidecar (model.engine.json: categories, input_spec), initialises TensorRT's
// plugin library (the deformable convolution of the R50 graphs runs as its ModulatedDeformConv2d plugin), sets the
// named input shapes, runs with enqueueV3 and prints the segments; the id map is written as a COCO panoptic PNG.
// TensorRT 10 or later (named-tensor API). Not built by pfcn's CMake project or tests: see CMakeLists.txt here.

#include <NvInfer.h>
#include <NvInferPlugin.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../examples/image_io.hpp"
#include "../src/json.hpp"

namespace {

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
    }
};

void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

size_t element_size(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kINT64: return 8;
        case nvinfer1::DataType::kBOOL: case nvinfer1::DataType::kUINT8: case nvinfer1::DataType::kINT8: return 1;
        default: throw std::runtime_error("unsupported tensor data type in the engine");
    }
}

// One I/O tensor: its device buffer and, after the run, a host copy.
struct Tensor {
    nvinfer1::DataType type;
    nvinfer1::Dims dims;
    size_t count = 1;
    void* device = nullptr;
    std::vector<uint8_t> host;

    double at(size_t i) const {  // element i as a number, whatever the engine's type
        switch (type) {
            case nvinfer1::DataType::kFLOAT: return reinterpret_cast<const float*>(host.data())[i];
            case nvinfer1::DataType::kINT32: return reinterpret_cast<const int32_t*>(host.data())[i];
            case nvinfer1::DataType::kINT64: return static_cast<double>(reinterpret_cast<const int64_t*>(host.data())[i]);
            default: return host[i];
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::cerr << "usage: pfcn_trt_predict IMAGE model.engine OUT_PANOPTIC.png\n";
        return 2;
    }
    try {
        const std::string engine_path = argv[2];
        // pfcn's metadata lives beside the plan (the plan bytes stay as TensorRT wrote them)
        const pfcn::json::Value meta = pfcn::json::parse(read_file(engine_path + ".json"));
        const pfcn::json::Value spec = pfcn::json::parse(meta.at("input_spec").string);
        const auto& shape = spec.at("inputs").at("images").at("shape").array;
        const bool fixed = shape[2].is_number() && shape[3].is_number();

        pfcn_example::Image img = pfcn_example::read_image(argv[1]);
        const int ch = fixed ? static_cast<int>(shape[2].number) : img.height;
        const int cw = fixed ? static_cast<int>(shape[3].number) : img.width;
        if (img.height > ch || img.width > cw)
            throw std::runtime_error("image does not fit the engine's fixed input; use a dynamic engine");

        Logger logger;
        initLibNvinferPlugins(&logger, "");  // registers the standard plugins (ModulatedDeformConv2d, ...)
        std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
        const std::string plan = read_file(engine_path);
        std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine) throw std::runtime_error(engine_path + ": cannot deserialize (other TensorRT version or GPU?)");
        std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());

        // inputs: the canvas [1, 3, H, W] uint8 RGB (image top-left) and sizes [1, 2] int64
        std::vector<uint8_t> canvas(static_cast<size_t>(3) * ch * cw, 0);
        for (int y = 0; y < img.height; ++y)
            for (int x = 0; x < img.width; ++x)
                for (int c = 0; c < 3; ++c)
                    canvas[(static_cast<size_t>(c) * ch + y) * cw + x] = img.rgb[(static_cast<size_t>(y) * img.width + x) * 3 + c];
        const int64_t sizes[2] = {img.height, img.width};
        context->setInputShape("images", nvinfer1::Dims4{1, 3, ch, cw});
        context->setInputShape("sizes", nvinfer1::Dims2{1, 2});

        std::map<std::string, Tensor> tensors;
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            Tensor t;
            t.type = engine->getTensorDataType(name);
            t.dims = context->getTensorShape(name);  // concrete once the input shapes are set
            for (int d = 0; d < t.dims.nbDims; ++d) t.count *= static_cast<size_t>(t.dims.d[d]);
            cuda_check(cudaMalloc(&t.device, std::max<size_t>(1, t.count * element_size(t.type))), "cudaMalloc");
            context->setTensorAddress(name, t.device);
            tensors[name] = std::move(t);
        }
        cudaStream_t stream;
        cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
        cuda_check(cudaMemcpyAsync(tensors["images"].device, canvas.data(), canvas.size(), cudaMemcpyHostToDevice,
                                   stream), "copy images");
        const size_t sizes_bytes = tensors["sizes"].count * element_size(tensors["sizes"].type);
        std::vector<uint8_t> sizes_host(sizes_bytes);
        if (tensors["sizes"].type == nvinfer1::DataType::kINT32) {
            const int32_t s32[2] = {img.height, img.width};
            std::memcpy(sizes_host.data(), s32, sizes_bytes);
        } else {
            std::memcpy(sizes_host.data(), sizes, sizes_bytes);
        }
        cuda_check(cudaMemcpyAsync(tensors["sizes"].device, sizes_host.data(), sizes_bytes, cudaMemcpyHostToDevice,
                                   stream), "copy sizes");
        if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
        for (auto& [name, t] : tensors) {
            if (engine->getTensorIOMode(name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT) continue;
            t.host.resize(t.count * element_size(t.type));
            cuda_check(cudaMemcpyAsync(t.host.data(), t.device, t.host.size(), cudaMemcpyDeviceToHost, stream),
                       "copy output");
        }
        cuda_check(cudaStreamSynchronize(stream), "synchronize");

        // segments: valid slots of the segment tables, dataset ids from segment_category_ids
        const Tensor& valid = tensors["segment_valid"];
        for (size_t k = 0; k < valid.count; ++k) {
            if (valid.at(k) == 0) continue;
            std::printf("segment id %d category %d isthing %d score %.4f area %lld\n",
                        static_cast<int>(tensors["segment_ids"].at(k)),
                        static_cast<int>(tensors["segment_category_ids"].at(k)),
                        static_cast<int>(tensors["segment_isthing"].at(k)), tensors["segment_scores"].at(k),
                        static_cast<long long>(tensors["segment_areas"].at(k)));
        }
        // the id map, cropped to the image: id = R + 256 G + 256^2 B
        const Tensor& pan = tensors["panoptic"];  // [1, H, W]
        std::vector<uint8_t> rgb(static_cast<size_t>(img.height) * img.width * 3);
        for (int y = 0; y < img.height; ++y)
            for (int x = 0; x < img.width; ++x) {
                const uint32_t id = static_cast<uint32_t>(pan.at(static_cast<size_t>(y) * cw + x));
                uint8_t* px = &rgb[(static_cast<size_t>(y) * img.width + x) * 3];
                px[0] = id & 255;
                px[1] = (id >> 8) & 255;
                px[2] = (id >> 16) & 255;
            }
        pfcn_example::write_png(argv[3], rgb.data(), img.height, img.width, 3);
        for (auto& [name, t] : tensors) cudaFree(t.device);
        cudaStreamDestroy(stream);
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "pfcn_trt_predict: " << e.what() << "\n";
        return 1;
    }
}
