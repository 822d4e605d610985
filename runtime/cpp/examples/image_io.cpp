#include "image_io.hpp"

#include <jpeglib.h>
#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

#include <unistd.h>

namespace pfcn_example {
namespace {

using File = std::unique_ptr<FILE, int (*)(FILE*)>;

File open_file(const std::string& path, const char* mode) {
    File f(std::fopen(path.c_str(), mode), &std::fclose);
    if (!f) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
    return f;
}

// libjpeg reports errors through a callback; jump back out of the decoder instead of exiting the process.
struct JpegError {
    jpeg_error_mgr base;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr info) {
    auto* err = reinterpret_cast<JpegError*>(info->err);
    (*info->err->format_message)(info, err->message);
    std::longjmp(err->jump, 1);
}

Image read_jpeg(const std::string& path, FILE* file) {
    jpeg_decompress_struct info{};
    JpegError err{};
    info.err = jpeg_std_error(&err.base);
    err.base.error_exit = jpeg_error_exit;
    Image img;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&info);
        throw std::runtime_error(path + ": cannot decode JPEG (" + err.message + ")");
    }
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, file);
    jpeg_read_header(&info, TRUE);
    info.out_color_space = JCS_RGB;  // libjpeg converts grey and YCbCr; CMYK is refused below
    if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&info);
        throw std::runtime_error(path + ": CMYK JPEGs are not supported; convert it to RGB");
    }
    jpeg_start_decompress(&info);
    img.height = static_cast<int>(info.output_height);
    img.width = static_cast<int>(info.output_width);
    img.rgb.resize(static_cast<size_t>(img.height) * img.width * 3);
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = img.rgb.data() + static_cast<size_t>(info.output_scanline) * img.width * 3;
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    return img;
}

Image read_png(const std::string& path, FILE* file) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        throw std::runtime_error(path + ": out of memory reading PNG");
    }
    Image img;
    std::vector<png_bytep> rows;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        throw std::runtime_error(path + ": cannot decode PNG");
    }
    png_init_io(png, file);
    png_read_info(png, info);
    // normalise every PNG to 8-bit RGB: palette -> RGB, grey -> RGB, 16 -> 8 bits, alpha dropped
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_read_update_info(png, info);
    img.height = static_cast<int>(png_get_image_height(png, info));
    img.width = static_cast<int>(png_get_image_width(png, info));
    img.rgb.resize(static_cast<size_t>(img.height) * img.width * 3);
    rows.resize(img.height);
    for (int y = 0; y < img.height; ++y) rows[y] = img.rgb.data() + static_cast<size_t>(y) * img.width * 3;
    png_read_image(png, rows.data());
    png_read_end(png, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);
    return img;
}

}  // namespace

Image read_image(const std::string& path) {
    File f = open_file(path, "rb");
    unsigned char magic[8] = {0};
    size_t n = std::fread(magic, 1, sizeof magic, f.get());
    std::rewind(f.get());
    if (n >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) return read_jpeg(path, f.get());
    if (n == 8 && png_sig_cmp(magic, 0, 8) == 0) return read_png(path, f.get());
    throw std::runtime_error(path + ": not a JPEG or PNG file (unrecognised first bytes)");
}

void write_png(const std::string& path, const uint8_t* pixels, int height, int width, int channels) {
    const std::string tmp = path + ".tmp" + std::to_string(getpid());
    {
        File f = open_file(tmp, "wb");
        png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
        png_infop info = png ? png_create_info_struct(png) : nullptr;
        if (!info) {
            png_destroy_write_struct(&png, nullptr);
            throw std::runtime_error(path + ": out of memory writing PNG");
        }
        if (setjmp(png_jmpbuf(png))) {
            png_destroy_write_struct(&png, &info);
            std::remove(tmp.c_str());
            throw std::runtime_error(path + ": cannot write PNG");
        }
        png_init_io(png, f.get());
        png_set_IHDR(png, info, width, height, 8, channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        for (int y = 0; y < height; ++y)
            png_write_row(png, const_cast<png_bytep>(pixels + static_cast<size_t>(y) * width * channels));
        png_write_end(png, nullptr);
        png_destroy_write_struct(&png, &info);
        if (std::fflush(f.get()) != 0) throw std::runtime_error(path + ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error(path + ": cannot move the written file into place");
    }
}

}  // namespace pfcn_example
