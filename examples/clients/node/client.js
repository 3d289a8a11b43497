#!/usr/bin/env node
// Calls a modelgate gateway three ways with @grpc/grpc-js: KServe v2
// GRPCInferenceService/ModelInfer, TF-Serving PredictionService/Predict and
// modelgate.v1.Gateway/Invoke (JSON tensor codec). Prints one line per call
// ("kserve add_one [2, 3, 4]") and exits 1 on the first error, naming its gRPC code.
//
//   npm ci
//   npm run descriptors        # ../build/services.pb, with the repo's .venv (or $PYTHON)
//   node client.js --address 127.0.0.1:8500 --model add_one
//
// The service definitions come from a descriptor set exported by ../export_descriptors.py
// (no third-party .proto file is committed); --descriptors points at another one.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULTS = {
  address: '127.0.0.1:8500',
  model: 'add_one',
  version: '',
  input: 'INPUT0',
  output: 'OUTPUT0',
  'timeout-ms': '10000',
  calls: 'kserve,tfserving,invoke',
  values: '1,2,3',
  descriptors: path.join(__dirname, '..', 'build', 'services.pb'),
};

function parseArgs(argv) {
  const opts = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') {
      console.log(`usage: node client.js ${Object.keys(DEFAULTS).map((k) => `[--${k} ${DEFAULTS[k]}]`).join(' ')}`);
      process.exit(0);
    }
    const key = flag.replace(/^--/, '');
    if (!flag.startsWith('--') || !(key in DEFAULTS) || i + 1 >= argv.length) {
      throw new Error(`bad argument ${flag} (see --help)`);
    }
    opts[key] = argv[i + 1];
    i += 1;
  }
  opts.timeoutMs = Number(opts['timeout-ms']);
  opts.values = opts.values.split(',').map(Number);
  opts.calls = opts.calls.split(',');
  return opts;
}

function loadServices(file) {
  if (!fs.existsSync(file)) {
    throw new Error(
      `descriptor set ${file} is missing; export it with \`npm run descriptors\` ` +
        '(or: .venv/bin/python examples/clients/export_descriptors.py examples/clients/build/services.pb)',
    );
  }
  const definition = protoLoader.loadFileDescriptorSetFromBuffer(fs.readFileSync(file), {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

// Every call gets a deadline: without one, a call to a server that never answers waits forever.
function unary(client, method, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

function floatsLE(buffer) {
  const out = [];
  for (let off = 0; off + 4 <= buffer.length; off += 4) out.push(buffer.readFloatLE(off));
  return out;
}

async function kserve(pkg, channelOpts, o) {
  const client = new pkg.inference.GRPCInferenceService(o.address, ...channelOpts);
  try {
    const response = await unary(client, 'ModelInfer', {
      model_name: o.model,
      model_version: o.version,
      inputs: [{ name: o.input, datatype: 'FP32', shape: [o.values.length], contents: { fp32_contents: o.values } }],
      outputs: [{ name: o.output }],
    }, o.timeoutMs);
    const index = response.outputs.findIndex((t) => t.name === o.output);
    if (index < 0) throw new Error(`no output ${o.output} in ModelInferResponse`);
    // Triton answers with raw little-endian bytes; typed contents are the fallback.
    if (index < response.raw_output_contents.length) return floatsLE(response.raw_output_contents[index]);
    return response.outputs[index].contents.fp32_contents;
  } finally {
    client.close();
  }
}

async function tfserving(pkg, channelOpts, o) {
  const client = new pkg.tensorflow.serving.PredictionService(o.address, ...channelOpts);
  try {
    const spec = { name: o.model };
    if (o.version) spec.version = { value: Number(o.version) };
    const response = await unary(client, 'Predict', {
      model_spec: spec,
      // NOTE: loaded from a descriptor set, protobufjs sees map<string, TensorProto> as its
      // wire form, a repeated {key, value} entry (from .proto files it would be an object).
      inputs: [{
        key: o.input,
        value: { dtype: 'DT_FLOAT', tensor_shape: { dim: [{ size: o.values.length }] }, float_val: o.values },
      }],
    }, o.timeoutMs);
    const entry = response.outputs.find((e) => e.key === o.output);
    const out = entry && entry.value;
    if (!out) throw new Error(`no output ${o.output} in PredictResponse`);
    return out.float_val.length ? out.float_val : floatsLE(out.tensor_content);
  } finally {
    client.close();
  }
}

async function invoke(pkg, channelOpts, o) {
  const client = new pkg.modelgate.v1.Gateway(o.address, ...channelOpts);
  try {
    const body = { inputs: [{ name: o.input, shape: [o.values.length], datatype: 'FP32', data: o.values }] };
    const response = await unary(client, 'Invoke', {
      model: o.model,
      version: o.version,
      content_type: 'application/json',
      payload: Buffer.from(JSON.stringify(body)),
    }, o.timeoutMs);
    const doc = JSON.parse(response.payload.toString('utf8'));
    const out = doc.outputs.find((t) => t.name === o.output);
    if (!out) throw new Error(`no output ${o.output} in Invoke payload`);
    return out.data;
  } finally {
    client.close();
  }
}

const CALLS = { kserve, tfserving, invoke };

async function main() {
  let o;
  let pkg;
  try {
    o = parseArgs(process.argv.slice(2));
    pkg = loadServices(o.descriptors);
  } catch (err) {
    console.error(`error: ${err.message}`);
    return 2;
  }
  const channelOpts = [grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 * 1024 * 1024 }];
  for (const name of o.calls) {
    const call = CALLS[name];
    if (!call) {
      console.error(`error: unknown call ${name}`);
      return 2;
    }
    try {
      const result = await call(pkg, channelOpts, o);
      // Fixed one decimal, like Java's Float.toString for these values: "[2.0, 3.0, 4.0]".
      console.log(`${name} ${o.model} [${Array.from(result, (v) => Number(v).toFixed(1)).join(', ')}]`);
    } catch (err) {
      // err.code is the numeric gRPC status; UNAVAILABLE may be retried, NOT_FOUND and
      // INVALID_ARGUMENT may not.
      const code = err.code !== undefined ? grpc.status[err.code] : 'CLIENT';
      console.error(`error: ${code}: ${err.details || err.message}`);
      return 1;
    }
  }
  return 0;
}

main().then((status) => process.exit(status));
