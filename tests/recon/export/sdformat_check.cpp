// Reference SDFormat check for the Gazebo export tests (built by tests/recon/test_export.py against
// Debian's libsdformat-dev via pkg-config).
//
// usage: sdformat_check MODELS_DIR FILE.sdf...
// For every file:
//   CHECK <rc>        rc of cmdCheck, the routine behind `gz sdf -k` / `ign sdf -k` (0 = valid); model://
//                     URIs resolve through SDF_PATH, which the caller sets to MODELS_DIR
//   ERROR <message>   one per error of a strict load (sdf::Root::Load with warnings and unrecognised
//                     elements treated as errors; model:// -> MODELS_DIR)
//   MODEL <name> <x y z> <roll pitch yaw>       per model as the parser resolved it (world: its models)
//   TAG <model> <element>                       custom (namespaced) element of the model, then
//   ATTR <model> <key> <value to the end of the line>   one line per attribute of it
//   MESH <model> <link> visual|collision <uri>
// Exit status: the number of files with errors.
#include <sdf/sdf.hh>

#include <iostream>
#include <string>

extern "C" int cmdCheck(const char *_path);

static void dumpModel(const sdf::Model *model) {
  const auto pose = model->RawPose();
  std::cout << "MODEL " << model->Name() << " " << pose.Pos().X() << " " << pose.Pos().Y() << " "
            << pose.Pos().Z() << " " << pose.Rot().Roll() << " " << pose.Rot().Pitch() << " "
            << pose.Rot().Yaw() << std::endl;
  for (auto el = model->Element()->GetFirstElement(); el; el = el->GetNextElement()) {
    const std::string name = el->GetName();
    if (name.find(':') == std::string::npos) continue;
    std::cout << "TAG " << model->Name() << " " << name << std::endl;
    for (const auto &attr : el->GetAttributes())
      std::cout << "ATTR " << model->Name() << " " << attr->GetKey() << " " << attr->GetAsString() << std::endl;
  }
  for (uint64_t l = 0; l < model->LinkCount(); ++l) {
    const sdf::Link *link = model->LinkByIndex(l);
    for (uint64_t v = 0; v < link->VisualCount(); ++v) {
      const sdf::Geometry *g = link->VisualByIndex(v)->Geom();
      if (g && g->MeshShape())
        std::cout << "MESH " << model->Name() << " " << link->Name() << " visual " << g->MeshShape()->Uri()
                  << std::endl;
    }
    for (uint64_t c = 0; c < link->CollisionCount(); ++c) {
      const sdf::Geometry *g = link->CollisionByIndex(c)->Geom();
      if (g && g->MeshShape())
        std::cout << "MESH " << model->Name() << " " << link->Name() << " collision " << g->MeshShape()->Uri()
                  << std::endl;
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    std::cerr << "usage: sdformat_check MODELS_DIR FILE.sdf..." << std::endl;
    return 100;
  }
  int bad = 0;
  for (int i = 2; i < argc; ++i) {
    std::cout << "FILE " << argv[i] << std::endl;
    const int rc = cmdCheck(argv[i]);
    std::cout << "CHECK " << rc << std::endl;
    sdf::ParserConfig config;
    config.SetWarningsPolicy(sdf::EnforcementPolicy::ERR);
    config.SetUnrecognizedElementsPolicy(sdf::EnforcementPolicy::ERR);
    config.AddURIPath("model://", argv[1]);
    sdf::Root root;
    const sdf::Errors errors = root.Load(argv[i], config);
    for (const auto &e : errors) std::cout << "ERROR " << e.Message() << std::endl;
    if (rc != 0 || !errors.empty()) ++bad;
    for (uint64_t w = 0; w < root.WorldCount(); ++w) {
      const sdf::World *world = root.WorldByIndex(w);
      for (uint64_t m = 0; m < world->ModelCount(); ++m) dumpModel(world->ModelByIndex(m));
    }
    if (root.Model()) dumpModel(root.Model());
  }
  return bad;
}
