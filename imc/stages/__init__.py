"""The pipeline's stages, one module each, called alike: `main(conf, inputs, out_dir)`.

orientation, features, retrieval and pairs, matching, verification, clustering, mapping
(with global_mapping and reconstruction, the COLMAP side); imc.pipeline chains them.
"""
