package io.modelgate.examples;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.ByteString;
import com.google.protobuf.Int64Value;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.modelgate.v1.GatewayGrpc;
import io.modelgate.v1.InvokeRequest;
import io.modelgate.v1.InvokeResponse;
import inference.GRPCInferenceServiceGrpc;
import inference.GrpcService.InferTensorContents;
import inference.GrpcService.ModelInferRequest;
import inference.GrpcService.ModelInferResponse;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.tensorflow.framework.DataType;
import org.tensorflow.framework.TensorProto;
import org.tensorflow.framework.TensorShapeProto;
import tensorflow.serving.Model.ModelSpec;
import tensorflow.serving.Predict.PredictRequest;
import tensorflow.serving.Predict.PredictResponse;
import tensorflow.serving.PredictionServiceGrpc;

/**
 * Calls a modelgate gateway three ways with the stubs Java services already have: KServe v2
 * {@code GRPCInferenceService/ModelInfer}, TF-Serving {@code PredictionService/Predict} and
 * modelgate's own {@code Gateway/Invoke} (JSON tensor codec).
 *
 * <p>Prints one line per call ({@code kserve add_one [2.0, 3.0, 4.0]}) and exits 1 on the first
 * error, printing its gRPC status code. Every call carries a deadline: without one a blocking
 * stub waits forever on a server (or a classpath) that never answers.
 */
public final class Client {
  private Client() {}

  static final class Options {
    String address = "127.0.0.1:8500";
    String model = "add_one";
    String version = "";
    String input = "INPUT0";
    String output = "OUTPUT0";
    long timeoutMs = 10_000;
    List<String> calls = Arrays.asList("kserve", "tfserving", "invoke");
    float[] values = {1f, 2f, 3f};
  }

  static Options parse(String[] args) {
    Options o = new Options();
    for (int i = 0; i < args.length; i++) {
      String flag = args[i];
      if (flag.equals("-h") || flag.equals("--help")) {
        System.out.println(
            "usage: Client [--address host:port] [--model add_one] [--version N]"
                + " [--input INPUT0] [--output OUTPUT0] [--timeout-ms 10000]"
                + " [--calls kserve,tfserving,invoke] [--values 1,2,3]");
        System.exit(0);
      }
      if (i + 1 >= args.length) {
        throw new IllegalArgumentException("missing value for " + flag);
      }
      String value = args[++i];
      switch (flag) {
        case "--address": o.address = value; break;
        case "--model": o.model = value; break;
        case "--version": o.version = value; break;
        case "--input": o.input = value; break;
        case "--output": o.output = value; break;
        case "--timeout-ms": o.timeoutMs = Long.parseLong(value); break;
        case "--calls": o.calls = Arrays.asList(value.split(",")); break;
        case "--values": {
          String[] parts = value.split(",");
          o.values = new float[parts.length];
          for (int k = 0; k < parts.length; k++) {
            o.values[k] = Float.parseFloat(parts[k].trim());
          }
          break;
        }
        default: throw new IllegalArgumentException("unknown flag " + flag);
      }
    }
    return o;
  }

  /** KServe v2: typed FP32 contents in; Triton answers with raw little-endian bytes. */
  static float[] kserve(ManagedChannel channel, Options o) {
    ModelInferRequest.InferInputTensor.Builder input =
        ModelInferRequest.InferInputTensor.newBuilder()
            .setName(o.input)
            .setDatatype("FP32")
            .addShape(o.values.length);
    InferTensorContents.Builder contents = InferTensorContents.newBuilder();
    for (float v : o.values) {
      contents.addFp32Contents(v);
    }
    input.setContents(contents);
    ModelInferRequest request =
        ModelInferRequest.newBuilder()
            .setModelName(o.model)
            .setModelVersion(o.version)
            .addInputs(input)
            .addOutputs(
                ModelInferRequest.InferRequestedOutputTensor.newBuilder().setName(o.output))
            .build();
    ModelInferResponse response =
        GRPCInferenceServiceGrpc.newBlockingStub(channel)
            .withDeadlineAfter(o.timeoutMs, TimeUnit.MILLISECONDS)
            .modelInfer(request);
    for (int i = 0; i < response.getOutputsCount(); i++) {
      ModelInferResponse.InferOutputTensor out = response.getOutputs(i);
      if (!out.getName().equals(o.output)) {
        continue;
      }
      if (i < response.getRawOutputContentsCount()) {
        ByteBuffer raw =
            response.getRawOutputContents(i).asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
        float[] result = new float[raw.remaining() / 4];
        raw.asFloatBuffer().get(result);
        return result;
      }
      List<Float> typed = out.getContents().getFp32ContentsList();
      float[] result = new float[typed.size()];
      for (int k = 0; k < result.length; k++) {
        result[k] = typed.get(k);
      }
      return result;
    }
    throw new IllegalStateException("no output " + o.output + " in ModelInferResponse");
  }

  /** TF-Serving: DT_FLOAT TensorProto in, float_val or tensor_content out. */
  static float[] tfserving(ManagedChannel channel, Options o) {
    TensorProto.Builder tensor =
        TensorProto.newBuilder()
            .setDtype(DataType.DT_FLOAT)
            .setTensorShape(
                TensorShapeProto.newBuilder()
                    .addDim(TensorShapeProto.Dim.newBuilder().setSize(o.values.length)));
    for (float v : o.values) {
      tensor.addFloatVal(v);
    }
    ModelSpec.Builder spec = ModelSpec.newBuilder().setName(o.model);
    if (!o.version.isEmpty()) {
      spec.setVersion(Int64Value.of(Long.parseLong(o.version)));
    }
    PredictRequest request =
        PredictRequest.newBuilder().setModelSpec(spec).putInputs(o.input, tensor.build()).build();
    PredictResponse response =
        PredictionServiceGrpc.newBlockingStub(channel)
            .withDeadlineAfter(o.timeoutMs, TimeUnit.MILLISECONDS)
            .predict(request);
    TensorProto out = response.getOutputsOrThrow(o.output);
    if (out.getFloatValCount() > 0) {
      float[] result = new float[out.getFloatValCount()];
      for (int k = 0; k < result.length; k++) {
        result[k] = out.getFloatVal(k);
      }
      return result;
    }
    ByteBuffer raw = out.getTensorContent().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
    float[] result = new float[raw.remaining() / 4];
    raw.asFloatBuffer().get(result);
    return result;
  }

  /** modelgate.v1.Gateway/Invoke with the JSON tensor codec. */
  static float[] invoke(ManagedChannel channel, Options o) {
    JsonArray data = new JsonArray();
    for (float v : o.values) {
      data.add(v);
    }
    JsonArray shape = new JsonArray();
    shape.add(o.values.length);
    JsonObject tensor = new JsonObject();
    tensor.addProperty("name", o.input);
    tensor.add("shape", shape);
    tensor.addProperty("datatype", "FP32");
    tensor.add("data", data);
    JsonArray inputs = new JsonArray();
    inputs.add(tensor);
    JsonObject body = new JsonObject();
    body.add("inputs", inputs);

    InvokeRequest request =
        InvokeRequest.newBuilder()
            .setModel(o.model)
            .setVersion(o.version)
            .setContentType("application/json")
            .setPayload(ByteString.copyFrom(body.toString(), StandardCharsets.UTF_8))
            .build();
    InvokeResponse response =
        GatewayGrpc.newBlockingStub(channel)
            .withDeadlineAfter(o.timeoutMs, TimeUnit.MILLISECONDS)
            .invoke(request);
    JsonObject doc =
        JsonParser.parseString(response.getPayload().toStringUtf8()).getAsJsonObject();
    for (JsonElement element : doc.getAsJsonArray("outputs")) {
      JsonObject out = element.getAsJsonObject();
      if (!out.get("name").getAsString().equals(o.output)) {
        continue;
      }
      JsonArray values = out.getAsJsonArray("data");
      float[] result = new float[values.size()];
      for (int k = 0; k < result.length; k++) {
        result[k] = values.get(k).getAsFloat();
      }
      return result;
    }
    throw new IllegalStateException("no output " + o.output + " in Invoke payload");
  }

  public static void main(String[] args) throws InterruptedException {
    Options o;
    try {
      o = parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("error: " + e.getMessage());
      System.exit(2);
      return;
    }
    ManagedChannel channel =
        ManagedChannelBuilder.forTarget(o.address)
            .usePlaintext()
            .maxInboundMessageSize(64 * 1024 * 1024)
            .build();
    int status = 0;
    try {
      for (String call : o.calls) {
        float[] result;
        switch (call) {
          case "kserve": result = kserve(channel, o); break;
          case "tfserving": result = tfserving(channel, o); break;
          case "invoke": result = invoke(channel, o); break;
          default: throw new IllegalArgumentException("unknown call " + call);
        }
        System.out.println(call + " " + o.model + " " + Arrays.toString(result));
      }
    } catch (StatusRuntimeException e) {
      // The code is what a caller branches on: UNAVAILABLE may be retried, NOT_FOUND and
      // INVALID_ARGUMENT may not.
      System.err.println(
          "error: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
      status = 1;
    } catch (RuntimeException e) {
      System.err.println("error: " + e);
      status = 1;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.exit(status);
  }
}
