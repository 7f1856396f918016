// Reference outputs of the CenterNet-MobileNetV3 TFJS graph (@vladmandic/human@3.3.6), run by
// @tensorflow/tfjs itself (pure JavaScript CPU backend) under Node.
//
// Usage: node make_reference.js WORKDIR [WEIGHTS_DIR]
//   WORKDIR holds inputs.json and <name>.rgb (raw RGB uint8, 512 x 512) written by
//   `python reference_io.py inputs WORKDIR`; WEIGHTS_DIR defaults to the project's weight cache
//   (.cache/weights/vladmandic-human, filled by `conceptsim models fetch`).
// Writes WORKDIR/ref.json and, per image i and compared node j, WORKDIR/<i>_<j>.f32 (float32 NHWC), plus
// the graph's own decoded tower_0/detections and the rows human keeps after non-max suppression.
'use strict';

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

// Human's default IoU threshold (src/config.ts: object.iouThreshold); a score threshold below
// human's 0.2 so that each test photo keeps a few detections to compare.
const IOU_THRESHOLD = 0.4;
const SCORE_THRESHOLD = 0.1;
const MAX_DETECTED = 100;

function loadHandler(dir) {
  // The pure-JS package has no file:// loader; hand the graph and the weights over from memory.
  const spec = JSON.parse(fs.readFileSync(path.join(dir, 'centernet.json'), 'utf8'));
  const paths = spec.weightsManifest.flatMap((g) => g.paths);
  const bufs = paths.map((p) => fs.readFileSync(path.join(dir, p)));
  const all = Buffer.concat(bufs);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {
    load: async () => ({
      modelTopology: spec.modelTopology,
      format: spec.format,
      generatedBy: spec.generatedBy,
      convertedBy: spec.convertedBy,
      signature: spec.signature,
      weightSpecs: spec.weightsManifest.flatMap((g) => g.weights),
      weightData,
    }),
  };
}

async function main() {
  const work = process.argv[2];
  if (!work) throw new Error('usage: node make_reference.js WORKDIR [WEIGHTS_DIR]');
  const weights = process.argv[3] || path.resolve(__dirname, '../../.cache/weights/vladmandic-human');
  await tf.setBackend('cpu');
  await tf.ready();
  const model = await tf.loadGraphModel(loadHandler(weights));
  const inputs = JSON.parse(fs.readFileSync(path.join(work, 'inputs.json'), 'utf8'));
  const nodes = inputs.nodes;
  const fetches = [...nodes, 'tower_0/detections'];
  const shapes = {};
  const nms = [];
  for (let i = 0; i < inputs.names.length; i++) {
    const raw = fs.readFileSync(path.join(work, `${inputs.names[i]}.rgb`));
    const x = tf.tidy(() => tf.tensor4d(new Uint8Array(raw), [1, inputs.height, inputs.width, 3], 'int32').toFloat());
    const t0 = Date.now();
    const outs = model.execute({ 'tower_0/images': x }, fetches);
    for (let j = 0; j < nodes.length; j++) {
      shapes[nodes[j]] = outs[j].shape;
      fs.writeFileSync(path.join(work, `${i}_${j}.f32`), Buffer.from(outs[j].dataSync().buffer));
    }
    const det = outs[nodes.length];
    fs.writeFileSync(path.join(work, `${i}_detections.f32`), Buffer.from(det.dataSync().buffer));
    // Decoding as human's src/object/centernet.ts: boxes reordered to (y1, x1, y2, x2) for tf's NMS.
    const rows = det.squeeze([0]);
    const cols = tf.split(rows, 6, 1);
    const boxes = tf.concat([cols[1], cols[0], cols[3], cols[2]], 1);
    const scores = cols[4].squeeze([1]);
    const keep = await tf.image.nonMaxSuppressionAsync(boxes, scores, MAX_DETECTED, IOU_THRESHOLD, SCORE_THRESHOLD);
    nms.push(Array.from(keep.dataSync()));
    console.log(`${inputs.names[i]}: ${Date.now() - t0} ms, ${nms[i].length} detections after NMS`);
    tf.dispose([x, ...outs, rows, ...cols, boxes, scores, keep]);
  }
  const ref = {
    tfjs_version: tf.version.tfjs,
    backend: tf.getBackend(),
    images: inputs.names,
    nodes,
    shapes,
    nms,
    iou_threshold: IOU_THRESHOLD,
    score_threshold: SCORE_THRESHOLD,
  };
  fs.writeFileSync(path.join(work, 'ref.json'), JSON.stringify(ref, null, 1));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
