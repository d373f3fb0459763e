module ScoreSde.Tests.ImageCliTests

open System.IO
open Expecto
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests
open ScoreSde.Tests.ImageDataTests
open ScoreSde.Tests.CliTests

// The command line sets libtorch's thread count (process-wide): run one at a time.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Command line: images"
        [ test "classifier trains on an MNIST-format directory, reports its accuracy and saves itself" {
              use dataTemp = tempDir "clicls-data"
              let data = dataTemp.Path
              writeSplit data "train" 40 12 12 true
              writeSplit data "t10k" 20 12 12 false
              use outTemp = tempDir "clicls"
              let out = Path.Combine(outTemp.Path, "classifier")
              let log =
                  cliOk
                      [ "classifier"
                        "--data-dir"
                        data
                        "--out"
                        out
                        "--epochs"
                        "1"
                        "--batch-size"
                        "8"
                        "--seed"
                        "3" ]
              Expect.stringContains log "test accuracy" "summary line"
              Expect.stringContains log "on 20 images" "evaluated on the test split"
              use loaded = ClassifierFile.load out
              Expect.equal loaded.Classifier.Config.Classes 10 "labels 0..9 give 10 classes"
              Expect.equal loaded.Pixels PixelRange.Centred "default pixel range"
              Expect.isTrue (loaded.Training.ContainsKey "testAccuracy") "accuracy stored"
              // the Frechet distance of the test images, written as samples in the classifier's range,
              // to the test split is 0 (quantising exact levels gives them back); train vs test is not
              let floor = cliOk [ "frechet"; "--classifier"; out; "--data-dir"; data ]
              Expect.stringContains floor "the training split (40 images) and the test split (20 images)" "train vs test"
              use test = FashionMnist.load data Split.Test
              use samplesTemp = tempDir "clicls-samples"
              let samples = Path.Combine(samplesTemp.Path, "s.npy")
              use x = ImageSet.batch PixelRange.Centred TorchSharp.torch.float32 (TorchSharp.torch.arange 20L) test
              DataFile.save samples x
              let same = cliOk [ "frechet"; "--classifier"; out; "--data-dir"; data; "--samples"; samples ]
              Expect.stringContains same "Frechet distance 0.000 between" "samples = the test split"
              let firstTen = cliOk [ "frechet"; "--classifier"; out; "--data-dir"; data; "--samples"; samples; "--n"; "10" ]
              Expect.stringContains firstTen "(10 images) and the test split (10 images)" "--n"
          }

          test "classifier without the dataset says how to install it, in one line" {
              use emptyTemp = tempDir "clicls-empty"
              let empty = emptyTemp.Path
              cliFails [ "classifier"; "--data-dir"; empty; "--out"; Path.Combine(empty, "c") ] "apt-get install dataset-fashion-mnist"
          } ]
