// A small JSON reader for the metadata pfcn embeds in its packages (categories, input_spec).
// Only reading is needed, and only of documents pfcn itself wrote; a parse error throws std::runtime_error.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pfcn::json {

struct Value {
    enum class Kind { Null, Bool, Number, String, Array, Object };
    Kind kind = Kind::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Value> array;
    std::map<std::string, Value> object;

    bool is_null() const { return kind == Kind::Null; }
    bool is_number() const { return kind == Kind::Number; }
    bool is_string() const { return kind == Kind::String; }
    bool is_array() const { return kind == Kind::Array; }
    bool is_object() const { return kind == Kind::Object; }
    // Member access that throws a message naming the key when it is missing.
    const Value& at(const std::string& key) const;
    const Value* find(const std::string& key) const;
};

Value parse(const std::string& text);

// Write a string as a JSON string literal (quotes and escapes included).
std::string quote(const std::string& s);

}  // namespace pfcn::json
